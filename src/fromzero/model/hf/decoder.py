"""Hugging Face interop: import GPT-2 / Llama / Qwen2 causal-LM folders, export back to them.

A folder means config.json + model.safetensors (or a sharded model.safetensors.index.json).
Mapping notes:
  * GPT-2 stores Linear weights as Conv1D [in, out]: transposed on the way in and out.
  * Our attention uses one fused qkv projection ([q; k; v] rows) and Llama's MLP one fused
    [gate; up] projection; HF's separate matrices are concatenated / split.
  * RoPE uses HF's rotate-half layout, so q/k weights need no permutation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fromzero.errors import FromzeroError
from fromzero.model.config import ModelConfig
from fromzero.model.decoder import DecoderLM
from fromzero.model.io import clean_state_dict, load_state_strict, read_config, read_safetensors
from fromzero.modules.wrappers import unwrap

SUPPORTED = ("gpt2", "llama", "qwen2")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ---------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig equivalent to a HF config.json dict (FromzeroError for unsupported features)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        _require(act in _GELU_TANH, f"GPT-2 activation '{act}' (only the tanh GELU 'gelu_new' is supported)")
        _require(not hf.get("scale_attn_by_inverse_layer_idx", False), "GPT-2 scale_attn_by_inverse_layer_idx=true")
        _require(hf.get("scale_attn_weights", True), "GPT-2 scale_attn_weights=false")
        return ModelConfig(
            arch="gpt2", vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"],
            d_model=hf["n_embd"], d_ff=hf.get("n_inner") or None, max_seq_len=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
            bias=True,
        )
    if kind in ("llama", "qwen2"):
        act = hf.get("hidden_act", "silu")
        _require(act == "silu", f"{kind} hidden_act '{act}' (only 'silu' is supported)")
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        _require(rope_type == "default", f"RoPE scaling type '{rope_type}'")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        d, heads = hf["hidden_size"], hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or d // heads
        _require(head_dim * heads == d, f"head_dim={head_dim} != hidden_size/num_attention_heads={d // heads}")
        if kind == "qwen2":
            _require(not (hf.get("use_sliding_window") and hf.get("sliding_window")), "Qwen2 sliding-window attention")
            bias, qkv_bias = False, True
        else:
            attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
            _require(attn_bias == mlp_bias, "Llama with attention_bias != mlp_bias")
            bias, qkv_bias = attn_bias, None
        return ModelConfig(
            arch="llama", vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads, d_model=d, d_ff=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta), tie_embeddings=hf.get("tie_word_embeddings", False),
            bias=bias, qkv_bias=qkv_bias,
        )
    raise FromzeroError(
        f"Hugging Face model_type {kind!r} is not supported; fromzero imports {', '.join(SUPPORTED)} causal LMs"
    )


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise FromzeroError(f"unsupported Hugging Face checkpoint feature: {what}; fromzero cannot import this model")


def hf_config_from(cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """HF config.json dict for a fromzero config (GPT-2, Llama, or Qwen2 when only qkv has biases)."""
    if cfg.arch == "gpt2":
        if cfg.kv_heads != cfg.n_head or not cfg.has_bias or cfg.has_qkv_bias != cfg.has_bias:
            raise FromzeroError(
                "HF GPT-2 needs plain multi-head attention and biases everywhere; this gpt2 config has "
                f"n_kv_head={cfg.kv_heads}, bias={cfg.has_bias}, qkv_bias={cfg.has_qkv_bias}: save it with save_model instead"
            )
        out = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": cfg.ffn_dim, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True, "tie_word_embeddings": cfg.tie_embeddings,
        }
    else:
        qwen = cfg.has_qkv_bias and not cfg.has_bias
        if cfg.has_qkv_bias != cfg.has_bias and not qwen:
            raise FromzeroError("no HF architecture has biases everywhere except q/k/v; set qkv_bias equal to bias")
        out = {
            "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
            "model_type": "qwen2" if qwen else "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
            "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_dropout": cfg.dropout, "tie_word_embeddings": cfg.tie_embeddings,
        }
        if not qwen:
            out.update(attention_bias=cfg.has_bias, mlp_bias=cfg.has_bias)
    out["dtype"] = "float32"
    out.update(extra)
    return out


# ---------------------------------------------------------------- weights


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def state_from_hf(cfg: ModelConfig, hf: dict[str, Tensor], model_type: str) -> dict[str, Tensor]:
    """HF tensors -> fromzero state dict (unknown HF keys are kept under their own name, so the
    strict load that follows reports them)."""
    out: dict[str, Tensor] = {}
    src = dict(hf)

    def take(key: str) -> Tensor:
        if key not in src:
            raise FromzeroError(f"the Hugging Face checkpoint has no tensor '{key}'; it is incomplete or not a {model_type} model")
        return src.pop(key)

    if model_type == "gpt2":
        src = _strip(src, "transformer.")
        for k in [k for k in src if k.endswith((".attn.bias", ".attn.masked_bias"))]:
            del src[k]  # causal-mask buffers of old checkpoints, not weights
        out["tok_emb.weight"] = take("wte.weight")
        out["pos_emb.weight"] = take("wpe.weight")
        for i in range(cfg.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[b + ours + ".weight"] = take(h + theirs + ".weight")
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[b + ours + ".weight"] = take(h + theirs + ".weight").t().contiguous()  # Conv1D is [in, out]
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
        out["norm.weight"] = take("ln_f.weight")
        out["norm.bias"] = take("ln_f.bias")
    else:
        src = {k: v for k, v in src.items() if not k.endswith("rotary_emb.inv_freq")}
        lm_head = src.pop("lm_head.weight", None)
        src = _strip(src, "model.")
        out["tok_emb.weight"] = take("embed_tokens.weight")
        for i in range(cfg.n_layer):
            h, b = f"layers.{i}.", f"blocks.{i}."
            out[b + "norm1.weight"] = take(h + "input_layernorm.weight")
            out[b + "norm2.weight"] = take(h + "post_attention_layernorm.weight")
            a = h + "self_attn."
            out[b + "attn.qkv.weight"] = torch.cat([take(a + p + "_proj.weight") for p in "qkv"])
            if cfg.has_qkv_bias:
                out[b + "attn.qkv.bias"] = torch.cat([take(a + p + "_proj.bias") for p in "qkv"])
            out[b + "attn.proj.weight"] = take(a + "o_proj.weight")
            m = h + "mlp."
            out[b + "mlp.gate_up.weight"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")])
            out[b + "mlp.down.weight"] = take(m + "down_proj.weight")
            if cfg.has_bias:
                out[b + "attn.proj.bias"] = take(a + "o_proj.bias")
                out[b + "mlp.gate_up.bias"] = torch.cat([take(m + "gate_proj.bias"), take(m + "up_proj.bias")])
                out[b + "mlp.down.bias"] = take(m + "down_proj.bias")
        out["norm.weight"] = take("norm.weight")
        if not cfg.tie_embeddings:
            if lm_head is None:
                raise FromzeroError("the Hugging Face checkpoint has untied embeddings but no 'lm_head.weight'; it is incomplete")
            out["lm_head.weight"] = lm_head
    if cfg.arch == "gpt2" and not cfg.tie_embeddings:
        head = src.pop("lm_head.weight", None)
        if head is None:
            raise FromzeroError("the Hugging Face checkpoint has untied embeddings but no 'lm_head.weight'; it is incomplete")
        out["lm_head.weight"] = head
    src.pop("lm_head.weight", None)  # tied: HF may still store a copy
    out.update(src)  # leftovers -> reported as unexpected by the strict load
    return out


def state_to_hf(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """fromzero state dict (as from clean_state_dict) -> HF tensor names and layouts."""
    out: dict[str, Tensor] = {}
    if cfg.arch == "gpt2":
        t = "transformer."
        out[t + "wte.weight"] = state["tok_emb.weight"]
        out[t + "wpe.weight"] = state["pos_emb.weight"]
        for i in range(cfg.n_layer):
            h, b = f"{t}h.{i}.", f"blocks.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[h + theirs + ".weight"] = state[b + ours + ".weight"]
                out[h + theirs + ".bias"] = state[b + ours + ".bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[h + theirs + ".weight"] = state[b + ours + ".weight"].t().contiguous()
                out[h + theirs + ".bias"] = state[b + ours + ".bias"]
        out[t + "ln_f.weight"] = state["norm.weight"]
        out[t + "ln_f.bias"] = state["norm.bias"]
    else:
        qd, kvd = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        out["model.embed_tokens.weight"] = state["tok_emb.weight"]
        for i in range(cfg.n_layer):
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            out[h + "input_layernorm.weight"] = state[b + "norm1.weight"]
            out[h + "post_attention_layernorm.weight"] = state[b + "norm2.weight"]
            for suffix in ("weight", "bias"):
                qkv = state.get(f"{b}attn.qkv.{suffix}")
                if qkv is not None:
                    for name, part in zip("qkv", qkv.split([qd, kvd, kvd])):
                        out[f"{h}self_attn.{name}_proj.{suffix}"] = part.contiguous()
                if f"{b}attn.proj.{suffix}" in state:
                    out[f"{h}self_attn.o_proj.{suffix}"] = state[f"{b}attn.proj.{suffix}"]
                gate_up = state.get(f"{b}mlp.gate_up.{suffix}")
                if gate_up is not None:
                    gate, up = gate_up.chunk(2)
                    out[f"{h}mlp.gate_proj.{suffix}"] = gate.contiguous()
                    out[f"{h}mlp.up_proj.{suffix}"] = up.contiguous()
                if f"{b}mlp.down.{suffix}" in state:
                    out[f"{h}mlp.down_proj.{suffix}"] = state[f"{b}mlp.down.{suffix}"]
        out["model.norm.weight"] = state["norm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def check_hf_shapes(cfg: ModelConfig, hf: dict[str, Tensor], source: str | Path) -> None:
    """Compare every HF tensor with the shape config.json implies, in the file's own names and layout.

    Runs before any fusing or transposing, which would otherwise crash in torch.cat or blame
    fromzero's fused tensor. The expected shapes come from exporting a meta-device model.
    """
    with torch.device("meta"):
        expected = state_to_hf(cfg, clean_state_dict(DecoderLM(cfg, init_weights=False)))
    for name, t in hf.items():
        want = next((expected[p + name].shape for p in ("", "transformer.", "model.") if p + name in expected), None)
        if want is not None and t.shape != want:
            raise FromzeroError(
                f"{source}: tensor '{name}' has shape {tuple(t.shape)} but config.json implies {tuple(want)}; "
                "config.json and the weights come from different models: use the config.json saved with these weights"
            )


# ---------------------------------------------------------------- folders


def read_hf_tensors(dir: Path) -> dict[str, Tensor]:
    """All tensors of a HF folder: model.safetensors or the shards named by its index."""
    single, index = dir / "model.safetensors", dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise FromzeroError(f"{index} is not a valid safetensors index ({e}); re-download the model") from None
        tensors: dict[str, Tensor] = {}
        for shard in shards:
            tensors.update(read_safetensors(dir / shard))
        return tensors
    if any((dir / n).is_file() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise FromzeroError(
            f"{dir} only has pickled pytorch_model.bin weights, which fromzero never unpickles; convert them "
            "once with transformers (AutoModelForCausalLM.from_pretrained(d).save_pretrained(d, safe_serialization=True))"
        )
    raise FromzeroError(f"{dir} has no model.safetensors; point to a Hugging Face model folder with safetensors weights")


def load_hf(dir: str | Path, map_location: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> DecoderLM:
    """Import a local Hugging Face GPT-2 / Llama / Qwen2 causal-LM folder as a DecoderLM."""
    dir = Path(dir)
    if not dir.is_dir():
        raise FromzeroError(f"model directory {dir} not found; pass a local Hugging Face model folder")
    hf_cfg = read_config(dir)
    cfg = config_from_hf(hf_cfg)
    tensors = read_hf_tensors(dir)
    check_hf_shapes(cfg, tensors, dir)
    state = state_from_hf(cfg, tensors, hf_cfg["model_type"])
    model = DecoderLM.empty(cfg, device=map_location, dtype=dtype)
    load_state_strict(model, state, dir, skip=("lm_head.weight",) if cfg.tie_embeddings else (),
                      hint=f"The weights do not fit the {hf_cfg['model_type']} layout fromzero expects.")
    return model


def save_hf(model: torch.nn.Module, dir: str | Path, **config_extra: Any) -> Path:
    """Write `model` as a HF folder (config.json + model.safetensors) loadable by
    transformers.AutoModelForCausalLM. Extra keys (e.g. bos_token_id, eos_token_id) go to config.json."""
    from safetensors.torch import save_file

    base = unwrap(model)
    if not isinstance(base, DecoderLM):
        raise TypeError(f"save_hf expects a DecoderLM, got {type(base).__name__}")
    cfg = base.config
    config = hf_config_from(cfg, **config_extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_to_hf(cfg, clean_state_dict(base)).items()}
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dir / "model.safetensors"), metadata={"format": "pt"})
    (dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dir
