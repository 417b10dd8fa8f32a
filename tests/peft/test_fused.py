"""LoRA with the usual Hugging Face target names on fromzero's fused layers, checked against `peft`.

fromzero computes q, k, v in one Linear; peft configs name q_proj / v_proj (Llama), query / value
(BERT) or c_attn / c_proj (GPT-2). The same tiny model is exported to transformers, peft wraps the
export, the same nonzero A and B go into both, and the logits and trainable counts must agree.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

from fromzero.errors import FromzeroError
from fromzero.model import DecoderLM, ModelConfig
from fromzero.model.encoder import EncoderConfig, EncoderModel
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config
from fromzero.model.hf.bert import save_hf_bert
from fromzero.model.hf.decoder import save_hf
from fromzero.peft import (
    LoRAParts,
    PeftConfig,
    apply_peft,
    load_adapter,
    merge_peft,
    save_adapter,
    trainable_parameters,
    unmerge_peft,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TEXT = "人民日报 1998: the quick brown fox jumps over the lazy dog. 北京新年第一天。".encode()
IDS = torch.tensor(list(TEXT[:48])).view(2, 24)


def llama() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(arch="llama", vocab_size=256, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                                 max_seq_len=64)).eval()


def gpt2() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(arch="gpt2", vocab_size=256, n_layer=2, n_head=4, d_model=32, max_seq_len=64)).eval()


def bert() -> EncoderModel:
    torch.manual_seed(0)
    return EncoderModel(EncoderConfig(vocab_size=256, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=64,
                                      dropout=0.0)).eval()


def _ours(theirs_name: str, layer_of) -> tuple[str, str | None]:
    """peft's module name -> (our module, our part or None)."""
    return layer_of(theirs_name.removeprefix("base_model.model."))


def _parity(ours, hf_dir, hf_cls, targets, layer_of, fan_in_fan_out, logits_of):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers / peft chatter about configs
        hf = getattr(transformers, hf_cls).from_pretrained(hf_dir).eval()
        theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                                          fan_in_fan_out=fan_in_fan_out))
    ours = apply_peft(ours, PeftConfig(method="lora", r=4, alpha=8, target_modules=targets))
    mods = dict(ours.named_modules())
    torch.manual_seed(1)
    copied = 0
    with torch.no_grad():
        for name, m in theirs.named_modules():
            if not (hasattr(m, "lora_A") and "default" in m.lora_A):
                continue
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            b.normal_(std=0.2)  # B starts at zero: make the LoRA path count
            module, part = _ours(name, layer_of)
            mine = mods[module]
            (mine.lora_A[part] if part else mine.lora_A).copy_(a)
            (mine.lora_B[part] if part else mine.lora_B).copy_(b)
            copied += 1
    assert copied > 0
    assert trainable_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours), logits_of(theirs), atol=1e-5, rtol=1e-5)
    return ours


def _decoder_logits(m):
    out = m(IDS)
    return out[0] if isinstance(out, tuple) else out.logits


def test_q_proj_v_proj_on_fused_qkv_match_peft_on_llama(tmp_path):
    def layer_of(name):  # model.layers.0.self_attn.q_proj -> blocks.0.attn.qkv, q
        i, proj = name.split(".")[2], name.rsplit(".", 1)[1]
        return f"blocks.{i}.attn.qkv", proj[0]

    ours = _parity(llama(), save_hf(llama(), tmp_path), "LlamaForCausalLM", ["q_proj", "v_proj"], layer_of, False,
                   _decoder_logits)
    qkv = ours.blocks[0].attn.qkv
    assert isinstance(qkv, LoRAParts) and list(qkv.parts) == ["q", "v"]
    assert qkv.lora_B["v"].shape == (2 * 8, 4)  # grouped-query attention: v is n_kv_head * head_dim rows


def test_c_attn_c_proj_match_peft_on_gpt2(tmp_path):
    def layer_of(name):  # transformer.h.0.attn.c_attn -> blocks.0.attn.qkv; mlp.c_proj -> mlp.down
        parts = name.split(".")
        i, where = parts[2], ".".join(parts[3:])
        return f"blocks.{i}." + {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_proj": "mlp.down"}[where], None

    ours = _parity(gpt2(), save_hf(gpt2(), tmp_path), "GPT2LMHeadModel", ["c_attn", "c_proj"], layer_of, True,
                   _decoder_logits)
    assert sorted(ours.fromzero_peft.targets) == sorted(f"blocks.{i}.{m}" for i in (0, 1)
                                                        for m in ("attn.qkv", "attn.proj", "mlp.down"))


def test_query_value_on_fused_qkv_match_peft_on_bert(tmp_path):
    def layer_of(name):  # bert.encoder.layer.0.attention.self.query -> blocks.0.attn.qkv, q
        i, proj = name.split(".")[3], name.rsplit(".", 1)[1]
        return f"blocks.{i}.attn.qkv", proj[0]

    def mlm_logits(m):
        out = m(input_ids=IDS)
        return out.logits if hasattr(out, "logits") else out[1]

    ours = _parity(bert(), save_hf_bert(bert(), tmp_path), "BertForMaskedLM", ["query", "value"], layer_of, False,
                   mlm_logits)
    assert list(ours.blocks[1].attn.qkv.parts) == ["q", "v"]


@pytest.mark.parametrize("make,targets", [
    (llama, ["q_proj", "v_proj", "gate_proj", "down_proj"]),
    (bert, ["query", "key"]),
    (lambda: EncoderDecoderLM(T5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=64, n_layer=1, n_head=2)).eval(),
     ["q", "v", "wi_1"]),
], ids=["llama", "bert", "t5"])
def test_sliced_lora_merges_unmerges_saves_and_loads(tmp_path, make, targets):
    torch.manual_seed(0)
    base = make()
    state0 = {k: v.clone() for k, v in base.state_dict().items()}
    ids = IDS[:, :12]

    def out(m):
        o = m(ids, decoder_input_ids=ids) if isinstance(base, EncoderDecoderLM) else m(ids)
        return o[0] if isinstance(o, tuple) else o.logits

    model = apply_peft(base, PeftConfig(method="lora", r=2, target_modules=targets))
    assert any(isinstance(m, LoRAParts) for m in model.modules())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2)
        ref = out(model)
        merge_peft(model)
        torch.testing.assert_close(out(model), ref, atol=1e-5, rtol=1e-5)
        unmerge_peft(model)
        torch.testing.assert_close(out(model), ref, atol=1e-5, rtol=1e-5)
    save_adapter(model, tmp_path)
    names = set(load_file(str(tmp_path / "adapter.safetensors")))
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    fresh = make()
    fresh.load_state_dict(state0)
    loaded = load_adapter(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(out(loaded), ref, atol=1e-6, rtol=0)
        merge_peft(loaded, unload=True)
        torch.testing.assert_close(out(loaded), ref, atol=1e-5, rtol=1e-5)
    assert set(loaded.state_dict()) == set(state0)  # plain model again


def test_fused_slices_work_only_where_the_method_can_adapt_them():
    with pytest.raises(FromzeroError, match=r"'k_proj' names the k slice of the fused layer 'blocks.0.attn.qkv'"):
        apply_peft(llama(), PeftConfig(method="ia3", target_modules=["k_proj", "v_proj"]))
    model = apply_peft(llama(), PeftConfig(method="ia3", target_modules=["c_attn"]))  # a whole fused layer is fine
    assert model.fromzero_peft.targets == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    with pytest.raises(FromzeroError, match="fused layers also answer to .*q_proj"):
        apply_peft(llama(), PeftConfig(method="lora", target_modules=["q_prj"]))
    # the whole fused layer wins over one of its slices; two names of one slice are one part
    model = apply_peft(llama(), PeftConfig(method="lora", target_modules=["attn.qkv", "q_proj"]))
    assert not any(isinstance(m, LoRAParts) for m in model.modules())
    model = apply_peft(llama(), PeftConfig(method="lora", target_modules=["q_proj", "query", "blocks.0.attn.q"]))
    assert list(model.blocks[0].attn.qkv.parts) == ["q"]


def test_default_targets_keep_wrapping_whole_layers():
    """The default list matches real names only, so adapters saved with it keep their tensor names."""
    t5 = apply_peft(EncoderDecoderLM(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, n_layer=1, n_head=2)),
                    PeftConfig(method="lora"))
    assert not any(isinstance(m, LoRAParts) for m in t5.modules())
    assert sorted(apply_peft(llama(), PeftConfig(method="lora")).fromzero_peft.targets) == \
        [f"blocks.{i}.attn.{m}" for i in (0, 1) for m in ("proj", "qkv")]


def test_unknown_method_lists_the_methods():
    from fromzero.config import build

    with pytest.raises(FromzeroError, match=r"unknown method 'loar' \(did you mean 'lora'\?\); methods: none, lora, "
                                            r"adapter, ia3, prefix, prompt, bitfit"):
        build(PeftConfig, {"method": "loar"})
