"""Every PEFT method on every fromzero model family: the method's parameters really enter the graph.

Forward + backward on a real (byte-level, padded) batch with the method's defaults: every
parameter left trainable gets a non-zero gradient and every frozen one gets none. (The check is on
the second backward: LoRA's B and an adapter's up-projection start at zero, so on the first one
the matrices behind them get an exactly zero gradient by design.) A method a family
cannot take raises one clear FromzeroError instead of silently training nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fromzero.errors import FromzeroError
from fromzero.model import DecoderLM, ModelConfig
from fromzero.model.encoder import EncoderConfig, EncoderModel
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config
from fromzero.peft import PeftConfig, apply_peft
from fromzero.peft.registry import METHODS
from fromzero.tuning.heads import SequenceClassifier

VOCAB, PAD = 256, 0
SENTENCES = ["人民日报 1998 年元旦社论", "the quick brown fox jumps over the lazy dog", "北京新年第一天。"]


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The sentences as UTF-8 bytes (+1, so 0 stays the pad id), right-padded, with their 1/0 mask."""
    rows = [[b + 1 for b in s.encode()][:40] for s in SENTENCES]
    T = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])
    return ids, (ids != PAD).long()


def decoder(arch: str):
    torch.manual_seed(0)
    kv = {"n_kv_head": 1} if arch == "llama" else {}
    model = DecoderLM(ModelConfig(arch=arch, vocab_size=VOCAB + 1, n_layer=2, n_head=2, d_model=32, max_seq_len=64,
                                  **kv))

    def loss(m):
        ids, mask = padded_batch()
        return m(ids, labels=ids.masked_fill(mask == 0, -100))[1]

    return model, {}, loss


def encoder():
    """The fine-tuning shape: a classifier on the encoder's pooled [CLS] (no MLM head, which
    classification never calls), the head kept trainable as fine-tuning does."""
    torch.manual_seed(0)
    enc = EncoderModel(EncoderConfig(vocab_size=VOCAB + 1, n_layer=2, n_head=2, d_model=32, max_seq_len=64,
                                     dropout=0.0, mlm_head=False))
    model = SequenceClassifier(enc, num_labels=2, dropout=0.0)

    def loss(m):
        ids, mask = padded_batch()
        return F.cross_entropy(m(ids, attention_mask=mask), torch.tensor([0, 1, 1]))

    return model, {"modules_to_save": ["classifier"]}, loss


def encoder_decoder():
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=VOCAB + 1, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_head=2,
                                      eos_id=1))

    def loss(m):
        ids, mask = padded_batch()
        labels = ids.flip(0)[:, :12].masked_fill(ids.flip(0)[:, :12] == PAD, -100)
        return m(ids, attention_mask=mask, labels=labels)[1]

    return model, {}, loss


FAMILIES = {
    "gpt2": lambda: decoder("gpt2"),
    "llama": lambda: decoder("llama"),
    "encoder": encoder,
    "t5": encoder_decoder,
}
# (method, family) -> the message it must fail with: what the family lacks.
UNSUPPORTED = {
    ("bitfit", "llama"): "has no bias parameters",
    ("bitfit", "t5"): "has no bias parameters",
    ("prompt", "t5"): "prompt tuning needs EncoderDecoderLM to take embeddings",
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_every_trainable_parameter_gets_a_gradient(method, family):
    model, extra, loss_of = FAMILIES[family]()
    cfg = PeftConfig(method=method, **extra)
    if (method, family) in UNSUPPORTED:
        with pytest.raises(FromzeroError, match=UNSUPPORTED[method, family]):
            apply_peft(model, cfg)
        return
    model = apply_peft(model, cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_of(model).backward()
    opt.step()
    opt.zero_grad()
    loss_of(model).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(list(model.parameters()))
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{method} on {family}: '{name}' got no gradient"
        else:
            assert p.grad is None, f"{method} on {family}: frozen '{name}' got a gradient"


def test_encoder_prefix_sees_through_padding():
    """A padded sentence with its mask gives the same states at its real positions as the sentence alone."""
    model, extra, _ = encoder()
    model = apply_peft(model, PeftConfig(method="prefix", num_virtual_tokens=4, **extra)).eval()
    enc = model.backbone
    for block in enc.blocks:  # make the prefix matter
        block.attn.prefix_key.data.normal_()
        block.attn.prefix_value.data.normal_()
    ids, mask = padded_batch()
    n = int(mask[2].sum())
    with torch.no_grad():
        padded = enc.hidden_states(ids[2:], mask[2:])[0, :n]
        alone = enc.hidden_states(ids[2:, :n])[0]
        plain = apply_peft(encoder()[0], PeftConfig(method="lora", **extra)).backbone.hidden_states(ids[2:, :n])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, plain, atol=1e-3)  # and the prefix does change the output


def test_t5_prefix_cached_decoding_equals_uncached():
    """The decoder's prefix is never written to the KV cache, so step-by-step cached decoding sees it
    exactly as the full decoder pass does."""
    model = apply_peft(encoder_decoder()[0], PeftConfig(method="prefix", num_virtual_tokens=3)).eval()
    for m in model.modules():
        if getattr(m, "prefix_kv", None) is not None:
            m.prefix_key.data.normal_()
            m.prefix_value.data.normal_()
    ids, mask = padded_batch()
    dec = ids.flip(0)[:, :6]
    with torch.no_grad():
        enc = model.encode(ids, mask)
        full = model.decode(dec, enc, mask)[0]
        cache = model.new_cache(enc, mask, dec.shape[1])
        steps = torch.cat([model.decode(dec[:, t:t + 1], cache=cache, start_pos=t)[0] for t in range(6)], dim=1)
        plain = encoder_decoder()[0].eval()(ids, mask, decoder_input_ids=dec)[0]
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, plain, atol=1e-3)
