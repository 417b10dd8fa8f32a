"""fromzero.peft: every method trains exactly the expected parameters, merges, saves and loads.

Most tests use TinyLM below: a 3-layer decoder whose attention follows the prefix protocol and
which has `forward_embeds`, i.e. what fromzero models must offer. Hugging Face GPT-2 (Conv1D
layers) and Llama (Linear layers) check generality and parity with the `peft` library.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fromzero.config import build
from fromzero.errors import FromzeroError
from fromzero.peft import (
    PeftConfig,
    PromptTuningModel,
    apply_peft,
    layerwise_param_groups,
    load_adapter,
    merge_peft,
    save_adapter,
    trainable_parameters,
    unmerge_peft,
)
from fromzero.peft.prompt import find_input_embedding

# A real sentence as byte-level tokens (vocab 256): no tokenizer needed.
TEXT = "人民日报 1998: the quick brown fox jumps over the lazy dog. 北京新年第一天。".encode()
VOCAB = 256


def batch(seq_len: int = 16, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(list(TEXT[: n * (seq_len + 1)])).view(n, seq_len + 1)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


# --------------------------------------------------------------------------------------------
# A tiny model that implements the prompt (forward_embeds) and prefix (prefix_kv) protocols


class TinyAttention(nn.Module):
    def __init__(self, d: int, n_head: int, n_kv_head: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, d // n_head
        self.qkv = nn.Linear(d, (n_head + 2 * n_kv_head) * self.head_dim)
        self.proj = nn.Linear(d, d)
        self.prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k, v = (t.view(B, T, KV, hd).transpose(1, 2) for t in (k, v))
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        if self.prefix_kv is not None:  # the protocol: prepend, and every query sees every prefix slot
            pk, pv = self.prefix_kv
            k = torch.cat([pk.unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
            mask = torch.cat([torch.ones(T, pk.shape[1], dtype=torch.bool), mask], dim=1)
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * hd))


class TinyBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = TinyAttention(d, n_head=4, n_kv_head=2)
        self.mlp = nn.Sequential()
        self.mlp.up, self.mlp.act, self.mlp.down = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, d: int = 32, n_layer: int = 3, max_len: int = 64):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=VOCAB)
        self.tok_emb = nn.Embedding(VOCAB, d)
        self.pos_emb = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(TinyBlock(d) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, input_ids, labels=None):
        return self.forward_embeds(self.tok_emb(input_ids), labels)

    def forward_embeds(self, x, labels=None):
        x = x + self.pos_emb.weight[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return logits, loss


def tiny(seed: int = 0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**kw).eval()


def hf_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def hf_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def logits_of(model, ids):
    out = model(ids)
    return out[0] if isinstance(out, tuple) else out.logits


def train_steps(model, steps: int = 3) -> None:
    """A few AdamW steps on the real-text batch (no weight decay: only gradients move weights)."""
    ids, labels = batch()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        out = model(ids, labels=labels)
        loss = out[1] if isinstance(out, tuple) else out.loss
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def assert_trains_exactly(model, expected: set[str]) -> None:
    """The trainable set is `expected`; training changes all of those and nothing else."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == expected
    n_train, n_total = trainable_parameters(model)
    assert n_train == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert n_total == sum(p.numel() for p in model.parameters())


def names(layers: range, *suffixes: str) -> set[str]:
    return {f"blocks.{i}.{s}" for i in layers for s in suffixes}


# --------------------------------------------------------------------------------------------
# Each method: exactly the right parameters train


def test_lora_trains_only_lora_weights_and_starts_as_the_base():
    model = tiny()
    ids, _ = batch()
    ref = logits_of(model, ids)
    model = apply_peft(model, PeftConfig(method="lora", r=4, target_modules=["attn.qkv", "attn.proj"]))
    assert torch.equal(logits_of(model, ids), ref)  # B = 0 at init
    assert_trains_exactly(model, names(range(3), "attn.qkv.lora_A", "attn.qkv.lora_B",
                                       "attn.proj.lora_A", "attn.proj.lora_B"))


def test_adapter_wraps_targets_generically():
    model = tiny()
    ids, _ = batch()
    ref = logits_of(model, ids)
    model = apply_peft(model, PeftConfig(method="adapter", adapter_size=8, target_modules=["attn.proj", "mlp.down"]))
    assert torch.equal(logits_of(model, ids), ref)  # up-projection is zero at init
    assert model.blocks[0].mlp.down.adapter_down.out_features == 8
    assert_trains_exactly(model, names(range(3), *(f"{m}.adapter_{p}.{w}" for m in ("attn.proj", "mlp.down")
                                                   for p in ("down", "up") for w in ("weight", "bias"))))


def test_ia3_trains_only_scales():
    model = tiny()
    ids, _ = batch()
    ref = logits_of(model, ids)
    model = apply_peft(model, PeftConfig(method="ia3", target_modules=["qkv", "mlp.down"]))
    assert torch.equal(logits_of(model, ids), ref)  # scales start at one
    assert_trains_exactly(model, names(range(3), "attn.qkv.ia3_l", "mlp.down.ia3_l"))


def test_bitfit_trains_biases_and_modules_to_save():
    model = apply_peft(tiny(), PeftConfig(method="bitfit", modules_to_save=["head"]))
    biases = {n for n, _ in tiny().named_parameters() if n.endswith(".bias")}
    assert_trains_exactly(model, biases | {"head.weight"})


def test_bitfit_on_a_model_without_biases_fails_clearly():
    with pytest.raises(FromzeroError, match="no bias parameters"):
        apply_peft(hf_llama(), PeftConfig(method="bitfit"))


def test_prompt_tuning_with_forward_embeds():
    base = tiny()
    model = apply_peft(base, PeftConfig(method="prompt", num_virtual_tokens=5))
    assert isinstance(model, PromptTuningModel) and model.base_model is base
    assert find_input_embedding(base) == "tok_emb"  # by vocab size, not the larger position table
    ids, labels = batch()
    logits, loss = model(ids, labels=labels)
    assert logits.shape == (2, ids.shape[1], VOCAB)  # virtual positions are sliced off
    # Same as running the base on [prompt; tokens] with labels ignored at the prompt positions.
    x = torch.cat([model.prompt_embeddings.unsqueeze(0).expand(2, -1, -1), base.tok_emb(ids)], dim=1)
    ref_logits, ref_loss = base.forward_embeds(x, torch.cat([torch.full((2, 5), -100), labels], dim=1))
    torch.testing.assert_close(logits, ref_logits[:, 5:])
    torch.testing.assert_close(loss, ref_loss)
    assert_trains_exactly(model, {"prompt_embeddings"})


def test_prompt_tuning_on_hugging_face_model_uses_inputs_embeds():
    base = hf_gpt2()
    model = apply_peft(base, PeftConfig(method="prompt", num_virtual_tokens=4))
    ids, _ = batch()
    mask = torch.ones_like(ids)
    out = model(ids, labels=ids, attention_mask=mask)
    assert out.logits.shape == (2, ids.shape[1], VOCAB)
    x = torch.cat([model.prompt_embeddings.unsqueeze(0).expand(2, -1, -1), base.transformer.wte(ids)], dim=1)
    ref = base(inputs_embeds=x, labels=torch.cat([torch.full((2, 4), -100), ids], dim=1))
    torch.testing.assert_close(out.logits, ref.logits[:, 4:])
    torch.testing.assert_close(out.loss, ref.loss)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt_embeddings"}


def test_prompt_tuning_needs_an_embeddings_entry_point():
    class NoEmbedsInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, input_ids):
            return self.emb(input_ids)

    with pytest.raises(FromzeroError, match="forward_embeds"):
        apply_peft(NoEmbedsInput(), PeftConfig(method="prompt"))


def test_prefix_tuning_through_the_attention_protocol():
    model = tiny()
    ids, _ = batch()
    ref = logits_of(model, ids)
    model = apply_peft(model, PeftConfig(method="prefix", num_virtual_tokens=3))
    attn = model.blocks[1].attn
    assert attn.prefix_key.shape == (2, 3, 8)  # [n_kv_head, P, head_dim]
    out = logits_of(model, ids)
    assert attn.prefix_kv[0] is attn.prefix_key and attn.prefix_kv[1] is attn.prefix_value
    assert out.shape == ref.shape and not torch.allclose(out, ref)
    assert_trains_exactly(model, names(range(3), "attn.prefix_key", "attn.prefix_value"))


def test_prefix_tuning_on_a_model_without_the_protocol_fails_clearly():
    model = hf_llama()
    with pytest.raises(FromzeroError, match="prefix_kv"):
        apply_peft(model, PeftConfig(method="prefix"))
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed


def test_adapter_weights_stay_fp32_on_a_bf16_base():
    model = apply_peft(tiny().to(torch.bfloat16), PeftConfig(method="lora", target_modules=["qkv"]))
    lora = model.blocks[0].attn.qkv
    assert lora.lora_A.dtype == torch.float32 and lora.base_layer.weight.dtype == torch.bfloat16
    nn.init.normal_(lora.lora_B, std=0.1)
    ids, labels = batch()
    logits, loss = model(ids, labels=labels)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    assert lora.lora_A.grad.dtype == torch.float32 and lora.lora_A.grad.abs().sum() > 0
    merge_peft(model)
    assert model.blocks[0].attn.qkv.base_layer.weight.dtype == torch.bfloat16


def test_modules_to_save_and_applying_twice():
    model = apply_peft(tiny(), PeftConfig(method="lora", target_modules=["qkv"], modules_to_save=["head"]))
    assert {"head.weight", "head.bias"} <= {n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(FromzeroError, match="already has PEFT"):
        apply_peft(model, PeftConfig(method="lora"))


# --------------------------------------------------------------------------------------------
# Target matching


def test_target_list_matching_nothing_lists_the_layers():
    with pytest.raises(FromzeroError) as e:
        apply_peft(hf_gpt2(), PeftConfig(method="lora", target_modules=["q_proj", "v_proj"]))
    msg = str(e.value)
    assert "'q_proj' matches no module" in msg
    assert "transformer.h.{0..1}.attn.c_attn" in msg and "(Conv1D)" in msg and "transformer.wte" in msg


def test_default_targets_fail_loudly_when_nothing_fits():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    with pytest.raises(FromzeroError, match=r"layers\.\{0\.\.2\} \(Linear\)"):
        apply_peft(Odd(), PeftConfig(method="lora"))


def test_one_misspelt_entry_is_an_error_not_silently_skipped():
    model = tiny()
    with pytest.raises(FromzeroError, match="'qvk' matches no module"):
        apply_peft(model, PeftConfig(method="lora", target_modules=["proj", "qvk"]))
    assert all(p.requires_grad for p in model.parameters())  # resolved before anything changed


def test_target_matching_a_container_names_its_type():
    with pytest.raises(FromzeroError, match=r"transformer\.h\.0\.attn' of type GPT2Attention.*c_attn"):
        apply_peft(hf_gpt2(), PeftConfig(method="lora", target_modules=["attn"]))


def test_regex_targets_and_default_targets():
    model = apply_peft(tiny(), PeftConfig(method="lora", target_modules=[r"blocks\.[02]\.attn\.qkv"]))
    assert model.fromzero_peft.targets == ["blocks.0.attn.qkv", "blocks.2.attn.qkv"]
    gpt2 = apply_peft(hf_gpt2(), PeftConfig(method="lora"))  # defaults: c_attn + attn.c_proj, not mlp.c_proj
    assert gpt2.fromzero_peft.targets == [f"transformer.h.{i}.attn.{m}" for m in ("c_attn", "c_proj") for i in (0, 1)]


def test_default_targets_fit_fromzero_decoder():
    from fromzero.model.config import ModelConfig
    from fromzero.model.decoder import DecoderLM

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(arch="llama", vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                                  max_seq_len=32)).eval()
    ids, _ = batch()
    model = apply_peft(model, PeftConfig(method="lora", r=2))
    assert sorted(model.fromzero_peft.targets) == [f"blocks.{i}.attn.{m}" for i in (0, 1) for m in ("proj", "qkv")]
    for m in model.modules():
        if hasattr(m, "lora_B"):
            nn.init.normal_(m.lora_B, std=0.1)
    out = logits_of(model, ids)
    torch.testing.assert_close(logits_of(merge_peft(model, unload=True), ids), out, atol=1e-5, rtol=1e-5)
    assert "blocks.0.attn.qkv.weight" in dict(model.named_parameters())  # original names again


# --------------------------------------------------------------------------------------------
# Merging


def randomize_adapters(model) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n or "ia3_l" in n:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "ia3_l" in n else 0.0))


@pytest.mark.parametrize("method,targets,make", [
    ("lora", ["qkv", "proj", "mlp.up", "tok_emb"], tiny),
    ("ia3", ["qkv", "mlp.down", "tok_emb"], tiny),
    ("lora", ["c_attn", "c_fc", "wpe"], hf_gpt2),  # Conv1D layout
    ("ia3", ["c_attn", "mlp.c_proj"], hf_gpt2),
])
def test_merge_gives_the_same_outputs_and_unmerge_restores_the_base(method, targets, make):
    model = make()
    ids, _ = batch()
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = apply_peft(model, PeftConfig(method=method, target_modules=targets))
    randomize_adapters(model)
    out = logits_of(model, ids)
    merge_peft(model)
    torch.testing.assert_close(logits_of(model, ids), out, atol=1e-5, rtol=1e-5)
    unmerge_peft(model)
    torch.testing.assert_close(logits_of(model, ids), out, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        plain = n.replace("base_layer.", "")
        if plain in base_weights:
            torch.testing.assert_close(p, base_weights[plain], atol=1e-6, rtol=1e-5)
    merge_peft(model, unload=True)
    assert set(dict(model.named_parameters())) == set(base_weights)
    torch.testing.assert_close(logits_of(model, ids), out, atol=1e-5, rtol=1e-5)


def test_merging_a_tied_embedding_is_refused():
    model = apply_peft(hf_gpt2(), PeftConfig(method="lora", target_modules=["wte"]))
    with pytest.raises(FromzeroError, match="'transformer.wte' .* tied to 'lm_head.weight'"):
        merge_peft(model)


def test_unmergeable_methods_refuse_to_merge():
    model = apply_peft(tiny(), PeftConfig(method="adapter", target_modules=["proj"]))
    with pytest.raises(FromzeroError, match="cannot be folded"):
        merge_peft(model)


# --------------------------------------------------------------------------------------------
# Parity with Hugging Face peft


def _peft_parity(make, targets, fan_in_fan_out):
    from peft import LoraConfig, get_peft_model

    ours = make()
    theirs = get_peft_model(make(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                               fan_in_fan_out=fan_in_fan_out))
    ours = apply_peft(ours, PeftConfig(method="lora", r=4, alpha=8, target_modules=targets))
    torch.manual_seed(1)
    prefix = "base_model.model."
    mods = dict(ours.named_modules())
    n_copied = 0
    with torch.no_grad():
        for name, m in theirs.named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            elif hasattr(m, "lora_embedding_A") and "default" in m.lora_embedding_A:
                a, b = m.lora_embedding_A["default"], m.lora_embedding_B["default"]
            else:
                continue
            a.normal_(std=0.2)
            b.normal_(std=0.2)  # B starts at zero: make the LoRA path count
            mine = mods[name[len(prefix):]]
            mine.lora_A.copy_(a)
            mine.lora_B.copy_(b)
            n_copied += 1
    assert n_copied == len(ours.fromzero_peft.targets)
    ids, _ = batch()
    theirs.eval()
    torch.testing.assert_close(logits_of(ours, ids), theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert trainable_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())


def test_lora_matches_hf_peft_on_gpt2_conv1d():
    _peft_parity(hf_gpt2, ["c_attn", "c_proj"], fan_in_fan_out=True)


def test_lora_matches_hf_peft_on_llama_linear_and_embedding():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _peft_parity(hf_llama, ["q_proj", "v_proj", "down_proj", "embed_tokens"], fan_in_fan_out=False)


# --------------------------------------------------------------------------------------------
# Saving and loading adapters


@pytest.mark.parametrize("cfg", [
    PeftConfig(method="lora", r=4, target_modules=["qkv", "proj"], modules_to_save=["head"]),
    PeftConfig(method="adapter", adapter_size=4, target_modules=["mlp.down"]),
    PeftConfig(method="ia3", target_modules=["qkv"]),
    PeftConfig(method="bitfit"),
    PeftConfig(method="prompt", num_virtual_tokens=3),
    PeftConfig(method="prefix", num_virtual_tokens=3),
    PeftConfig(method="none", freeze="bottom", freeze_bottom_k=2),
], ids=lambda c: c.method)
def test_save_load_round_trip(tmp_path, cfg):
    model = apply_peft(tiny(), cfg)
    train_steps(model, steps=2)
    ids, _ = batch()
    out = logits_of(model, ids)
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft"]["method"] == cfg.method and meta["base_model"]["class"] == "TinyLM"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    loaded = load_adapter(tiny(), tmp_path)  # the same base weights, a fresh model
    assert torch.equal(logits_of(loaded, ids), out)
    assert trainable_parameters(loaded) == trainable_parameters(model)


def test_loading_onto_a_different_base_names_tensor_and_shapes(tmp_path):
    save_adapter(apply_peft(tiny(d=32), PeftConfig(method="lora", r=4, target_modules=["qkv"])), tmp_path)
    with pytest.raises(FromzeroError, match=r"'blocks\.0\.attn\.qkv\.lora_A' has shape \[4, 32\] .* shape \[4, 48\]"):
        load_adapter(tiny(d=48), tmp_path)
    with pytest.raises(FromzeroError, match="not a fromzero adapter directory"):
        load_adapter(tiny(), tmp_path / "nowhere")


def test_config_from_yaml_dict_and_validation():
    cfg = build(PeftConfig, {"method": "lora", "r": 4, "target_modules": "c_attn"})
    assert cfg.target_modules == ["c_attn"]
    with pytest.raises(FromzeroError, match="method"):
        build(PeftConfig, {"method": "loar"})
    with pytest.raises(FromzeroError, match="freeze_bottom_k"):
        PeftConfig(freeze="bottom")
    with pytest.raises(FromzeroError, match="only takes effect"):
        PeftConfig(freeze_bottom_k=2)


# --------------------------------------------------------------------------------------------
# Freezing and layer-wise learning-rate decay


def test_freeze_strategies():
    all_names = {n for n, _ in tiny().named_parameters()}
    emb = {"tok_emb.weight", "pos_emb.weight"}
    model = apply_peft(tiny(), PeftConfig(freeze="embeddings"))
    assert_trains_exactly(model, all_names - emb)
    model = apply_peft(tiny(), PeftConfig(freeze="bottom", freeze_bottom_k=2))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n in all_names if n.startswith(("blocks.2.", "norm.", "head."))}
    model = apply_peft(tiny(), PeftConfig(freeze="all_but_head"))
    assert_trains_exactly(model, {"head.weight", "head.bias"})
    model = apply_peft(tiny(), PeftConfig(freeze="all_but_head", modules_to_save=["norm"]))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"norm.weight", "norm.bias"}
    with pytest.raises(FromzeroError, match="only 3 layers"):
        apply_peft(tiny(), PeftConfig(freeze="bottom", freeze_bottom_k=4))
    # freezing combines with a method, but never freezes the adapter weights
    model = apply_peft(tiny(), PeftConfig(method="bitfit", freeze="bottom", freeze_bottom_k=1))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n in all_names if n.endswith(".bias") and not n.startswith("blocks.0.")}


def test_freezing_a_tied_embedding_warns_about_the_head():
    with pytest.warns(UserWarning, match="tied"):
        model = apply_peft(hf_gpt2(), PeftConfig(freeze="all_but_head"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"transformer.wte.weight"}


def test_layerwise_lr_decay_groups():
    model = tiny()
    groups = layerwise_param_groups(model, lr=1.0, decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.startswith(("tok_emb", "pos_emb")):
            expected = 0.5 ** 4  # embeddings: lowest
        elif name.startswith("blocks."):
            expected = 0.5 ** (3 - int(name.split(".")[1]))
        else:
            expected = 1.0  # final norm and head: full lr
        assert lr_of[id(p)] == expected, name
    # Splitting existing (e.g. decay / no-decay) groups keeps their other keys.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = layerwise_param_groups(model, 1.0, 0.5, [{"params": decay, "weight_decay": 0.1},
                                                      {"params": no_decay, "weight_decay": 0.0}])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {(g["weight_decay"], g["lr_scale"]) for g in groups} >= {(0.1, 0.5 ** 4), (0.0, 1.0)}
    torch.optim.AdamW(groups)  # valid optimizer groups
    # Only trainable parameters, and LoRA weights take their layer's rate.
    lora = apply_peft(tiny(), PeftConfig(method="lora", target_modules=["qkv"]))
    groups = layerwise_param_groups(lora, lr=1.0, decay=0.5)
    assert sorted(g["lr"] for g in groups) == [0.125, 0.25, 0.5]
