"""fromzero.from_pretrained: one entry point that picks the family loader from config.json."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fromzero  # noqa: E402
from fromzero.errors import FromzeroError  # noqa: E402
from fromzero.model import save_model  # noqa: E402
from fromzero.model.config import ModelConfig  # noqa: E402
from fromzero.model.decoder import DecoderLM  # noqa: E402
from fromzero.model.encoder import EncoderConfig, EncoderModel, save_encoder  # noqa: E402
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config  # noqa: E402
from fromzero.modules.weights import save_weights  # noqa: E402
from fromzero.tuning.backbone import load_backbone  # noqa: E402

V = 97
ATOL = 1e-4


def hf_model(kind: str) -> torch.nn.Module:
    """A tiny random transformers model; weights perturbed so norms and biases are not trivially 1 / 0."""
    torch.manual_seed(0)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    elif kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32))
    elif kind == "bert":
        model = transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32))
    else:  # t5, mt5
        config = transformers.MT5Config if kind == "mt5" else transformers.T5Config
        model_class = transformers.MT5ForConditionalGeneration if kind == "mt5" else \
            transformers.T5ForConditionalGeneration
        model = model_class(config(
            vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def logits_pair(kind: str, hf: torch.nn.Module, ours: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(fromzero logits, transformers logits) on the same small input."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(2, V, (2, 11), generator=g)
    mask = torch.ones_like(x)
    mask[1, 7:] = 0
    with torch.no_grad():
        if kind in ("gpt2", "llama"):
            return ours(x)[0], hf(x).logits
        if kind == "bert":
            real = mask.bool()
            return ours(x, mask).logits[real], hf(input_ids=x, attention_mask=mask).logits[real]
        labels = torch.randint(2, V, (2, 5), generator=g)
        return ours(x, mask, labels=labels)[0], hf(input_ids=x, attention_mask=mask, labels=labels).logits


@pytest.mark.parametrize("kind, cls", [("gpt2", DecoderLM), ("llama", DecoderLM), ("bert", EncoderModel),
                                       ("t5", EncoderDecoderLM), ("mt5", EncoderDecoderLM)])
def test_hugging_face_folders_load_as_the_right_class_with_same_logits(tmp_path, kind, cls):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path)
    if kind == "bert":
        with pytest.warns(UserWarning, match="pooler"):  # BertForMaskedLM files have no pooler
            ours = fromzero.from_pretrained(tmp_path)
    else:
        ours = fromzero.from_pretrained(str(tmp_path))
    assert type(ours) is cls
    assert not ours.training  # eval mode, as transformers' from_pretrained
    got, ref = logits_pair(kind, hf, ours)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    if kind != "bert":  # fine-tuning's loader agrees (it once sent mT5 folders to the decoder loader)
        assert type(load_backbone(tmp_path)) is cls


def test_fromzero_folders_round_trip(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, V, (2, 9))
    decoder = DecoderLM(ModelConfig(arch="llama", vocab_size=V, n_layer=1, n_head=2, d_model=32, max_seq_len=16))
    decoder.eval()
    save_model(decoder, tmp_path / "dec")
    encoder = EncoderModel(EncoderConfig(vocab_size=V, n_layer=1, n_head=2, d_model=32, max_seq_len=16)).eval()
    save_encoder(encoder, tmp_path / "enc")
    save_weights(encoder, tmp_path / "enc-ckpt")  # a trainer checkpoint: bare EncoderConfig, no model_type
    t5 = EncoderDecoderLM(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, n_layer=1, n_head=2)).eval()
    save_weights(t5, tmp_path / "t5-ckpt")  # bare T5Config
    assert "model_type" not in json.loads((tmp_path / "t5-ckpt" / "config.json").read_text())

    with torch.no_grad():
        assert torch.equal(fromzero.from_pretrained(tmp_path / "dec")(x)[0], decoder(x)[0])
        for d in ("enc", "enc-ckpt"):
            assert torch.equal(fromzero.from_pretrained(tmp_path / d)(x).logits, encoder(x).logits)
        again = fromzero.from_pretrained(tmp_path / "t5-ckpt")
        assert type(again) is EncoderDecoderLM
        assert torch.equal(again(x, decoder_input_ids=x[:, :4])[0], t5(x, decoder_input_ids=x[:, :4])[0])


def test_unknown_or_missing_config_is_one_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FromzeroError, match=r"has no config\.json \(found: model\.safetensors\).*gpt2.*bert.*t5"):
        fromzero.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "d_model": 32}))
    with pytest.raises(FromzeroError, match=rf"{tmp_path}.*'mamba'.*llama, qwen2, bert, t5"):
        fromzero.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(FromzeroError, match="no model_type"):
        fromzero.from_pretrained(tmp_path)
    with pytest.raises(FromzeroError, match="not found"):
        fromzero.from_pretrained(tmp_path / "missing")


def test_untied_mt5_like_google_checkpoints(tmp_path):
    # google/mt5-* files hold their own lm_head and say tie_word_embeddings: false; no output rescaling
    hf = hf_model("mt5")
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32, generator=torch.Generator().manual_seed(2)) * 0.2)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    ours = fromzero.from_pretrained(tmp_path)
    assert not ours.config.tie_embeddings and not ours.config.scales_logits
    got, ref = logits_pair("mt5", hf, ours)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
