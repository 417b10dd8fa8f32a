"""Hugging Face interop: import tiny random GPT-2 / Llama (GQA) / Qwen2 checkpoints, export back,
and check logits (and greedy generation) against transformers."""

import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fromzero.errors import FromzeroError  # noqa: E402
from fromzero.infer import GenerationConfig, generate_ids  # noqa: E402
from fromzero.model import DecoderLM, ModelConfig, load_model  # noqa: E402
from fromzero.model.hf.decoder import load_hf, save_hf  # noqa: E402

V = 120


def hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=40, n_embd=64, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind in ("llama", "llama-tied"):
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2 if kind == "llama" else 1,
                                       max_position_embeddings=40, rope_theta=500.0, rms_norm_eps=1e-6,
                                       tie_word_embeddings=kind == "llama-tied")
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40)
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # perturb everything so norms and biases are not trivially 1 / 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-tied", "qwen2"])
def test_import_and_export_match_transformers_logits(tmp_path, kind):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf").eval()
    assert isinstance(load_model(tmp_path / "hf"), DecoderLM)  # load_model recognises HF folders too
    x = torch.randint(0, V, (2, 17))
    with torch.no_grad():
        ref = hf(x).logits
        got, _ = ours(x)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()

    save_hf(ours, tmp_path / "out", eos_token_id=0)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        assert torch.allclose(back(x).logits, ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generation_matches_transformers_generate(tmp_path, kind):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    x = torch.randint(1, V, (2, 6))
    with torch.no_grad():
        ref = hf.generate(x, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    got = generate_ids(ours, x, GenerationConfig(max_new_tokens=12, temperature=0))
    assert torch.equal(got, ref)


def test_fromzero_model_exports_to_hf_llama_with_gqa(tmp_path):
    torch.manual_seed(1)
    model = DecoderLM(ModelConfig(arch="llama", vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                                  max_seq_len=32, tie_embeddings=False)).eval()
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, V, (1, 11))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x)[0], atol=1e-4)


def test_unsupported_checkpoints_are_clear_errors(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}}))
    with pytest.raises(FromzeroError, match="RoPE scaling type 'llama3'"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(FromzeroError, match="model_type 'mamba'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(FromzeroError, match="never unpickles"):
        load_hf(tmp_path)
    gqa_gpt2 = DecoderLM(ModelConfig(arch="gpt2", vocab_size=V, n_layer=1, n_head=4, n_kv_head=2, d_model=32))
    with pytest.raises(FromzeroError, match="HF GPT-2 needs plain multi-head attention"):
        save_hf(gqa_gpt2, tmp_path / "x")


@pytest.mark.parametrize("kind, name, bad, want", [
    ("gpt2", "transformer.h.1.attn.c_attn.weight", (64, 150), (64, 192)),  # Conv1D [in, out], as in the file
    ("llama", "model.layers.0.self_attn.q_proj.weight", (64, 48), (64, 64)),  # wrong input width: used to crash in cat
    ("qwen2", "model.layers.1.mlp.up_proj.weight", (50, 64), (96, 64)),  # used to blame our fused gate_up
])
def test_wrong_tensor_shape_names_the_hf_tensor_and_both_shapes(tmp_path, kind, name, bad, want):
    from safetensors.torch import load_file, save_file

    hf_model(kind).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert tuple(weights[name].shape) == want
    weights[name] = torch.zeros(bad)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    expected = f"tensor '{name}' has shape {bad} but config.json implies {want}"
    with pytest.raises(FromzeroError, match=re.escape(expected)):
        load_model(tmp_path)
