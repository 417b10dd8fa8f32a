"""DecoderLM: shapes, causality, loss, hand-written backward passes, KV cache, init, save/load."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fromzero.config import build
from fromzero.errors import FromzeroError
from fromzero.model import PRESETS, DecoderLM, ModelConfig, layers, load_model, save_model
from fromzero.model.io import clean_state_dict

V = 97


def tiny(arch: str, **kw) -> ModelConfig:
    base = dict(arch=arch, vocab_size=V, n_layer=2, n_head=4, d_model=32, max_seq_len=24)
    if arch == "llama":
        base["n_kv_head"] = 2
    base.update(kw)
    return ModelConfig(**base)


def model_for(arch: str, seed: int = 0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(tiny(arch, **kw)).eval()


ARCHS = ["gpt2", "llama"]


# ---------------------------------------------------------------- config


def test_config_defaults_per_arch():
    g, l = ModelConfig(arch="gpt2"), ModelConfig(arch="llama", d_model=384)
    assert g.has_bias and g.ffn_dim == 4 * 384 and g.kv_heads == g.n_head
    assert not l.has_bias and l.ffn_dim == 1024 and l.ffn_dim % 64 == 0
    q = ModelConfig(arch="llama", qkv_bias=True)
    assert q.has_qkv_bias and not q.has_bias
    for name in PRESETS:
        ModelConfig.from_preset(name, vocab_size=300)


@pytest.mark.parametrize("kw, needle", [
    (dict(d_model=30, n_head=4), "divisible by n_head"),
    (dict(n_head=6, n_kv_head=4), "multiple of n_kv_head"),
    (dict(arch="bert"), "arch"),
    (dict(dropout=1.0), "dropout"),
    (dict(arch="llama", d_model=12, n_head=4), "even head size"),
])
def test_config_validation_is_a_clear_error(kw, needle):
    with pytest.raises(FromzeroError, match=needle):
        ModelConfig(**kw)


def test_config_builds_from_yaml_dict_and_unknown_preset():
    cfg = build(ModelConfig, {"arch": "llama", "n_kv_head": 2, "n_head": 4, "d_model": 64})
    assert cfg.kv_heads == 2
    with pytest.raises(FromzeroError, match="gpt-tiny"):
        ModelConfig.from_preset("gpt-huge")


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_loss_equals_manual_cross_entropy(arch):
    m = model_for(arch)
    x = torch.randint(0, V, (3, 10))
    y = torch.randint(0, V, (3, 10))
    y[0, :4] = -100
    logits, loss = m(x, y)
    assert logits.shape == (3, 10, V) and logits.dtype == torch.float32
    manual = -torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mask = y != -100
    assert loss.item() == pytest.approx((manual * mask).sum().item() / mask.sum().item(), rel=1e-5)
    logits2, none = m(x)
    assert none is None and torch.allclose(logits, logits2, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_masking_future_tokens_do_not_change_past_logits(arch):
    m = model_for(arch)
    x = torch.randint(0, V, (2, 16))
    x2 = x.clone()
    x2[:, 9:] = torch.randint(0, V, (2, 7))
    a, _ = m(x)
    b, _ = m(x2)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-3)


def test_too_long_input_is_a_clear_error():
    m = model_for("gpt2")
    with pytest.raises(FromzeroError, match="max_seq_len is 24"):
        m(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_matches_plain_autograd_reference(arch):
    """The fused LM-head loss, RMSNorm, RoPE and SwiGLU backward passes agree with autograd
    through a straightforward re-implementation of the same model."""
    m = model_for(arch, n_layer=1).train()
    x, y = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    _, loss = m(x, y)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ref_loss = F.cross_entropy(reference_forward(m, x).flatten(0, 1), y.flatten())
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for n, p in m.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5, rtol=1e-4), n


def reference_forward(m: DecoderLM, x: torch.Tensor) -> torch.Tensor:
    """Textbook decoder with the same weights (HF-style ops), for checking DecoderLM."""
    cfg = m.config
    B, T = x.shape
    h = m.tok_emb(x)
    if cfg.arch == "gpt2":
        h = h + m.pos_emb.weight[:T]
    H, KV, D = cfg.n_head, cfg.kv_heads, cfg.head_dim

    def norm(mod, t):
        if cfg.arch == "gpt2":
            return F.layer_norm(t, (cfg.d_model,), mod.weight, mod.bias, cfg.norm_eps)
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * mod.weight

    def rope(t):  # [B, heads, T, D], rotate-half convention
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2).float() / D))
        ang = torch.outer(torch.arange(T).float(), inv)
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        rot = torch.cat([-t[..., D // 2:], t[..., : D // 2]], -1)
        return t * cos + rot * sin

    for blk in m.blocks:
        a = blk.attn
        q, k, v = a.qkv(norm(blk.norm1, h)).split([H * D, KV * D, KV * D], -1)
        q, k, v = (t.view(B, T, -1, D).transpose(1, 2) for t in (q, k, v))
        if cfg.arch == "llama":
            q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        h = h + a.proj((att @ v).transpose(1, 2).reshape(B, T, -1))
        u = norm(blk.norm2, h)
        if cfg.arch == "gpt2":
            u = blk.mlp.down(F.gelu(blk.mlp.up(u), approximate="tanh"))
        else:
            gate, up = blk.mlp.gate_up(u).chunk(2, -1)
            u = blk.mlp.down(F.silu(gate) * up)
        h = h + u
    return m.lm_head(norm(m.norm, h))


def test_custom_autograd_functions_pass_gradcheck():
    torch.manual_seed(0)
    dbl = dict(dtype=torch.float64, requires_grad=True)
    check = lambda fn, inputs: torch.autograd.gradcheck(fn, inputs, fast_mode=True)  # noqa: E731
    x, w = torch.randn(2, 3, 2, 8, **dbl), torch.randn(8, **dbl)
    assert check(lambda x, w: layers._RMSNormFn.apply(x, w, 1e-5), (x, w))
    cos, sin = layers.rope_tables(8, 3, 10000.0)
    assert check(lambda x: layers._RopeFn.apply(x, cos.double(), sin.double()), (x,))
    for kind in ("silu", "gelu_tanh"):
        assert check(lambda x: layers._GatedMulFn.apply(x, kind), (x,))
    for kv in (4, 2, 1):
        q = torch.randn(1, 4, 5, 4, **dbl)
        k, v = torch.randn(1, kv, 5, 4, **dbl), torch.randn(1, kv, 5, 4, **dbl)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        assert torch.allclose(layers._CausalMatmulAttnFn.apply(q, k, v), ref, atol=1e-10)
        assert check(layers._CausalMatmulAttnFn.apply, (q, k, v))


def test_fused_lm_head_loss_matches_cross_entropy_with_extra_logit_gradients(monkeypatch):
    monkeypatch.setattr(layers, "_CHUNK_ELEMS", 64)  # force many row chunks
    monkeypatch.setattr(layers, "_MIN_ROWS", 1)
    torch.manual_seed(0)
    h = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 20, (13,))
    y[::4] = -100
    probe = torch.randn(13, 20, dtype=torch.float64)
    logits, loss = layers.lm_head_loss(h, w, y)
    ref_logits = h @ w.t()
    ref = F.cross_entropy(ref_logits, y)
    assert torch.allclose(logits, ref_logits) and torch.allclose(loss, ref)
    # logits used by another term too (e.g. distillation): both gradient paths must add up
    ours = torch.autograd.grad(2.5 * loss + (logits * probe).sum(), (h, w))
    theirs = torch.autograd.grad(2.5 * ref + (ref_logits * probe).sum(), (h, w))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-10)
    _, all_ignored = layers.lm_head_loss(h, w, torch.full((13,), -100))
    assert all_ignored.item() == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_training_step_is_close_to_fp32(arch):
    m = model_for(arch).train()
    x, y = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    _, loss32 = m(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = m(x, y)
    loss16.backward()
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_prefill_then_chunks_equals_full_forward(arch):
    m = model_for(arch)
    x = torch.randint(0, V, (2, 14))
    full, _ = m(x)
    cache = m.new_cache(2, 20)
    with torch.inference_mode():
        a, _ = m(x[:, :5], cache=cache)  # prefill (is_causal path)
        b, _ = m(x[:, 5:9], cache=cache, start_pos=5)  # several tokens after a prefix (explicit mask)
        c = [m(x[:, i : i + 1], cache=cache, start_pos=i)[0] for i in range(9, 14)]  # one at a time
    got = torch.cat([a, b, *c], dim=1)
    assert torch.allclose(got, full, atol=1e-5)
    with torch.inference_mode():
        last, _ = m(x[:, :5], cache=m.new_cache(2, 8), last_only=True)
    assert last.shape == (2, 1, V) and torch.allclose(last[:, 0], full[:, 4], atol=1e-5)


def test_dropout_is_active_only_in_training():
    m = model_for("gpt2", dropout=0.5)
    x = torch.randint(0, V, (1, 8))
    assert torch.equal(m(x)[0], m(x)[0])
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


# ---------------------------------------------------------------- init, counts, FLOPs


def test_gpt2_init_and_weight_tying():
    cfg = ModelConfig(arch="gpt2", vocab_size=2000, n_layer=4, n_head=4, d_model=128)
    torch.manual_seed(0)
    m = DecoderLM(cfg)
    assert m.lm_head.weight is m.tok_emb.weight
    assert m.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert m.blocks[0].attn.qkv.bias.abs().max().item() == 0
    untied = DecoderLM(ModelConfig(arch="gpt2", vocab_size=2000, n_layer=4, n_head=4, d_model=128, tie_embeddings=False))
    assert untied.num_params() == m.num_params() + 2000 * 128


def test_num_params_and_flops_per_token():
    cfg = ModelConfig(arch="gpt2", vocab_size=1000, n_layer=2, n_head=2, d_model=64, max_seq_len=32)
    m = DecoderLM(cfg)
    d, L = 64, 2
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert m.num_params() == 1000 * d + 32 * d + L * per_block + 2 * d
    assert m.num_params(exclude_embeddings=True) == L * per_block + 2 * d
    matmul = L * (3 * d * d + d * d + 8 * d * d) + 1000 * d  # blocks + LM head
    assert m.flops_per_token() == 6 * matmul + 12 * L * d * 32
    assert m.flops_per_token(seq_len=8) == 6 * matmul + 12 * L * d * 8


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("arch, tie", [("gpt2", True), ("llama", False), ("llama", True)])
def test_save_load_round_trip_gives_identical_logits(tmp_path, arch, tie):
    m = model_for(arch, tie_embeddings=tie)
    save_model(m, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["arch"] == arch and cfg["model_type"] == "fromzero-decoder"
    back = load_model(tmp_path / "ckpt")
    assert back.config == m.config
    assert (back.lm_head.weight is back.tok_emb.weight) == tie
    x = torch.randint(0, V, (2, 9))
    assert torch.equal(m(x)[0], back(x)[0])
    bf16 = load_model(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert bf16.tok_emb.weight.dtype == torch.bfloat16


def test_compiled_and_ddp_style_wrappers_are_unwrapped(tmp_path):
    m = model_for("llama")
    compiled = torch.compile(m)  # wrapping only: nothing is compiled until it is called
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_model(compiled, tmp_path / "c")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys)
    assert "lm_head.weight" not in keys  # tied: stored once

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(m)
        assert set(clean_state_dict(ddp)) == set(clean_state_dict(m))
        assert set(clean_state_dict(torch.compile(ddp))) == set(clean_state_dict(m))
    finally:
        dist.destroy_process_group()

    class HasModuleChild(torch.nn.Module):  # a user's own submodule called "module" is not a wrapper
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert all(k.startswith("module.") for k in clean_state_dict(HasModuleChild(m)))
    x = torch.randint(0, V, (1, 5))
    assert torch.equal(load_model(tmp_path / "c")(x)[0], m(x)[0])


def test_missing_truncated_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FromzeroError, match="not found"):
        load_model(tmp_path / "nope")
    m = model_for("gpt2")
    d = save_model(m, tmp_path / "ok")
    weights = d / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(FromzeroError, match="truncated or corrupt"):
        load_model(d)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(FromzeroError, match="truncated or corrupt"):
        load_model(d)
    weights.unlink()
    with pytest.raises(FromzeroError, match="model.safetensors not found"):
        load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(FromzeroError, match="not valid JSON"):
        load_model(d)


def test_foreign_checkpoints_name_the_offending_tensor(tmp_path):
    from safetensors.torch import save_file

    m = model_for("gpt2")
    d = save_model(m, tmp_path / "a")
    state = {k: v.contiguous() for k, v in clean_state_dict(m).items()}

    save_file({**state, "classifier.weight": torch.zeros(2, 2)}, str(d / "model.safetensors"))
    with pytest.raises(FromzeroError, match="unexpected tensors classifier.weight"):
        load_model(d)
    save_file({k: v for k, v in state.items() if k != "norm.bias"}, str(d / "model.safetensors"))
    with pytest.raises(FromzeroError, match="missing tensors norm.bias"):
        load_model(d)
    save_file({**state, "norm.weight": torch.ones(7)}, str(d / "model.safetensors"))
    with pytest.raises(FromzeroError, match=r"'norm.weight' has shape \(7,\) but the config implies \(32,\)"):
        load_model(d)

    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(FromzeroError, match="not a complete BERT config"):  # model_type picks the loader
        load_model(d)
    (d / "config.json").write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(FromzeroError, match="n_layers"):
        load_model(d)
