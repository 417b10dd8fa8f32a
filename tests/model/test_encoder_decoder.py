"""EncoderDecoderLM (T5-style): Hugging Face parity both ways, KV-cached generation, errors, bf16."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from fromzero.errors import FromzeroError
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config, relative_position_bucket, shift_right
from fromzero.model.hf.t5 import load_hf_t5, load_seq2seq_model, save_hf_t5
from fromzero.modules.weights import save_weights

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

V = 120


VARIANTS = {  # T5 v1.0: relu, tied, scaled output; T5 v1.1: gated-gelu, separate lm_head, unscaled
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
# A random T5 with HF's init decodes one token over and over; larger matrices make greedy parity meaningful.
GAIN = {"v1.0": 2.0, "v1.1": 1.5}


def hf_t5(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=V, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2,
                                num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1, **VARIANTS[variant])
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # not all ones, so a misplaced norm weight would show
                p.add_(torch.randn_like(p) * 0.1)
            elif name != "shared.weight":
                p.mul_(GAIN[variant])
        if variant == "v1.1":  # transformers 5 ties lm_head unless it is a different tensor
            model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 64) * 0.3)
    return model


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, V, (3, 19), generator=g)
    mask = torch.ones_like(x)
    mask[1, 13:] = 0
    mask[2, 7:] = 0
    x = x.masked_fill(mask == 0, 0)
    labels = torch.randint(2, V, (3, 9), generator=g)
    labels[1, 6:] = -100
    return x, mask, labels


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_import_export_logits_and_greedy_generation_match(tmp_path, variant):
    hf = hf_t5(variant)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_t5(tmp_path / "hf").eval()
    assert ours.config.tie_embeddings == (variant == "v1.0")
    assert ours.config.scales_logits == (variant == "v1.0")
    assert ours.config.feed_forward == VARIANTS[variant]["feed_forward_proj"]

    x, mask, labels = inputs()
    with torch.no_grad():
        ref = hf(input_ids=x, attention_mask=mask, labels=labels)
        logits, loss = ours(x, mask, labels=labels)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=0)
    assert abs(float(loss) - float(ref.loss)) < 1e-5

    # fromzero -> HF: transformers loads the export and computes the same logits
    save_hf_t5(ours, tmp_path / "export")
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x, attention_mask=mask, labels=labels).logits, logits,
                                   atol=1e-4, rtol=0)

    # greedy decoding: cached == uncached == transformers' generate
    want = hf.generate(input_ids=x, attention_mask=mask, max_new_tokens=10, do_sample=False, num_beams=1)[:, 1:]
    cached = ours.generate_ids(x, mask, max_new_tokens=10, eos_id=1)
    uncached = ours.generate_ids(x, mask, max_new_tokens=10, eos_id=1, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, want[:, : cached.shape[1]])
    assert len(set(cached.flatten().tolist())) > 4  # the check is not vacuous


def test_sampled_generation_with_cache_equals_without_and_stops_at_eos():
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_decoder_layer=3,
                                      n_head=4, eos_id=5)).eval()
    x, mask, _ = inputs()
    a = model.generate_ids(x, mask, max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    b = model.generate_ids(x, mask, max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=3, use_cache=False)
    assert torch.equal(a, b)
    # after a row emits eos it only gets pad
    for row in a.tolist():
        if 5 in row:
            assert all(t == 0 for t in row[row.index(5) + 1:])


def test_padding_does_not_change_the_result_of_the_real_tokens():
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_head=4)).eval()
    x = torch.randint(7, V, (1, 10))
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], dim=1).long()
    dec = torch.randint(7, V, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(x, decoder_input_ids=dec)[0], model(padded, mask, dec)[0],
                                   atol=1e-5, rtol=0)


def test_causal_decoder_and_shift_right():
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, n_layer=1, n_head=2)).eval()
    x = torch.randint(7, V, (2, 8))
    dec = torch.randint(7, V, (2, 6))
    changed = dec.clone()
    changed[:, 4:] = 9
    with torch.no_grad():
        a, b = model(x, decoder_input_ids=dec)[0], model(x, decoder_input_ids=changed)[0]
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    labels = torch.tensor([[11, 12, -100]])
    assert shift_right(labels, start_id=0, pad_id=0).tolist() == [[0, 11, 12]]


def test_relative_position_buckets_match_transformers():
    rel = torch.arange(-300, 300)[None, :]
    T5Attention = transformers.models.t5.modeling_t5.T5Attention
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (16, 64)):
            want = T5Attention._relative_position_bucket(rel, bidirectional, buckets, dist)
            assert torch.equal(relative_position_bucket(rel, bidirectional, buckets, dist), want)


def test_bf16_autocast_training_step_is_close_to_fp32():
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=V, d_model=64, d_kv=16, d_ff=96, n_layer=2, n_head=4, dropout=0.1))
    x, mask, labels = inputs()
    model.eval()
    with torch.no_grad():
        _, ref = model(x, mask, labels=labels)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, mask, labels=labels)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.15
    assert model.encoder.rel_bias.weight.grad.abs().sum() > 0 and model.decoder.rel_bias.weight.grad.abs().sum() > 0
    assert model.shared.weight.grad is not None


def test_training_checkpoint_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, n_layer=2, n_head=4,
                                      feed_forward="relu", tie_embeddings=False)).eval()
    save_weights(model, tmp_path)  # what the trainer writes into checkpoints/last
    again = load_seq2seq_model(tmp_path).eval()
    x, mask, labels = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, mask, labels=labels)[0], again(x, mask, labels=labels)[0])


def test_unsupported_and_mismatched_checkpoints_name_the_problem(tmp_path):
    hf = hf_t5("v1.1")
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "umt5"}))
    with pytest.raises(FromzeroError, match="umt5"):
        load_hf_t5(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "gated-silu"}))
    with pytest.raises(FromzeroError, match="gated-silu"):
        load_hf_t5(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps(config)[:-5])  # truncated, e.g. an interrupted download
    with pytest.raises(FromzeroError, match="config.json is not valid JSON"):
        load_seq2seq_model(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({**config, "d_ff": 128}))
    with pytest.raises(FromzeroError, match=r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight.*shape"):
        load_hf_t5(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(tmp_path / "model.safetensors")
    del weights["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(FromzeroError, match=r"decoder\.block\.1\.layer\.1\.EncDecAttention\.k\.weight.*missing"):
        load_hf_t5(tmp_path)

    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(FromzeroError, match="pickle"):
        load_hf_t5(tmp_path)


def test_config_validation_is_a_clear_error():
    with pytest.raises(FromzeroError, match="feed_forward"):
        T5Config(feed_forward="swiglu")
    with pytest.raises(FromzeroError, match="eos_id"):
        T5Config(vocab_size=3, eos_id=3)


def test_biased_attention_matches_autograd_reference():
    """The hand-written attention backward (incl. the gradient of a broadcast, learned bias)."""
    from fromzero.model.encoder_decoder import _BiasedAttnFn

    torch.manual_seed(0)
    dbl = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = torch.randn(2, 3, 4, 5, **dbl), torch.randn(2, 3, 6, 5, **dbl), torch.randn(2, 3, 6, 5, **dbl)
    for shape in ((1, 3, 4, 6), (2, 1, 1, 6), (2, 3, 4, 6)):
        bias = torch.randn(*shape, **dbl)
        ref = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
        assert torch.allclose(_BiasedAttnFn.apply(q, k, v, bias), ref, atol=1e-12)
        assert torch.autograd.gradcheck(_BiasedAttnFn.apply, (q, k, v, bias), fast_mode=True)
