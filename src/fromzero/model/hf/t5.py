"""Hugging Face T5 checkpoints both ways: local `T5ForConditionalGeneration` folders
(config.json + model.safetensors, or sharded with model.safetensors.index.json) <-> EncoderDecoderLM.

The weights map one to one; only fusion differs: HF keeps q, k, v (and the gated-GELU wi_0, wi_1)
as separate matrices, fromzero concatenates them into one matmul. HF stores the relative-position
bias table in layer 0 of each stack, fromzero once per stack.

Tied vs untied output head: transformers 5 always ties `lm_head` to `shared` unless the file holds
a different `lm_head.weight`, and decides the d_model**-0.5 output scaling by `scale_decoder_outputs`
(older files: by `tie_word_embeddings`). Import reads it the same way; export writes both keys, so
transformers 4 and 5 rebuild the same model.

Pickled `pytorch_model.bin` files are refused (loading a pickle can run code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fromzero.config import build
from fromzero.errors import FromzeroError
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config
from fromzero.model.io import read_config, read_safetensors
from fromzero.modules.weights import load_weights

SUPPORTED = ("t5", "mt5")
# transformers writes these (or older versions did); they duplicate `shared` or are never used
_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


# ---------------------------------------------------------------- configs

def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> T5Config:
    """T5Config from a Hugging Face T5 config.json dict."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise FromzeroError(f"{where}: model_type {model_type!r} is not a T5 model; fromzero imports "
                            f"{', '.join(SUPPORTED)} encoder-decoders here (umt5/longt5/switch are not supported)")
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in ("relu", "gated-gelu"):
        raise FromzeroError(f"{where}: feed_forward_proj {ff!r} is not supported; fromzero's T5 has relu (v1.0) "
                            "and gated-gelu (v1.1)")
    # transformers 5's MT5 never rescales, even where its own files say tie_word_embeddings: true
    # (transformers 4 rescaled those; real mT5 checkpoints are untied, and both versions agree on them)
    scale = model_type == "t5" and hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
    eos = hf.get("eos_token_id", 1)
    if isinstance(eos, list):
        eos = eos[0]
    pad = hf.get("pad_token_id", 0)
    try:
        return T5Config(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), d_kv=int(hf["d_kv"]), d_ff=int(hf["d_ff"]),
            n_layer=int(hf["num_layers"]), n_decoder_layer=hf.get("num_decoder_layers"), n_head=int(hf["num_heads"]),
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            dropout=float(hf.get("dropout_rate", 0.1)), norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
            feed_forward=ff, tie_embeddings=True, scale_logits=bool(scale),  # tying is decided by the weights
            pad_id=0 if pad is None else int(pad),
            decoder_start_id=int(hf.get("decoder_start_token_id") if hf.get("decoder_start_token_id") is not None
                                 else (0 if pad is None else pad)),
            eos_id=int(eos if eos is not None else 1),
        )
    except KeyError as e:
        raise FromzeroError(f"{where} lacks {e.args[0]!r}, which every T5 config has; the file is incomplete") from None


def config_to_hf(cfg: T5Config) -> dict[str, Any]:
    """The config.json transformers needs to rebuild the same T5ForConditionalGeneration."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.n_layer,
        "num_decoder_layers": cfg.decoder_layers,
        "num_heads": cfg.n_head,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": cfg.feed_forward,
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.scales_logits,
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
    }


# ---------------------------------------------------------------- weight names

def _name_map(cfg: T5Config) -> list[tuple[str, list[str]]]:
    """(fromzero tensor, [HF tensors concatenated along dim 0 to form it]) for every tensor."""
    def ff(ours: str, hf: str) -> list[tuple[str, list[str]]]:
        wi = [f"{hf}.DenseReluDense.wi_0.weight", f"{hf}.DenseReluDense.wi_1.weight"] \
            if cfg.feed_forward == "gated-gelu" else [f"{hf}.DenseReluDense.wi.weight"]
        return [(f"{ours}.wi.weight", wi), (f"{ours}.wo.weight", [f"{hf}.DenseReluDense.wo.weight"])]

    def qkv(ours: str, hf: str) -> list[tuple[str, list[str]]]:
        return [(f"{ours}.qkv.weight", [f"{hf}.{p}.weight" for p in "qkv"]), (f"{ours}.o.weight", [f"{hf}.o.weight"])]

    m: list[tuple[str, list[str]]] = [("shared.weight", ["shared.weight"])]
    for stack, n in (("encoder", cfg.n_layer), ("decoder", cfg.decoder_layers)):
        table = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        m.append((f"{stack}.rel_bias.weight", [table]))
        for i in range(n):
            ours, hf = f"{stack}.blocks.{i}", f"{stack}.block.{i}.layer"
            m.append((f"{ours}.norm1.weight", [f"{hf}.0.layer_norm.weight"]))
            if stack == "encoder":
                m += qkv(f"{ours}.attn", f"{hf}.0.SelfAttention")
                m.append((f"{ours}.norm2.weight", [f"{hf}.1.layer_norm.weight"]))
                m += ff(f"{ours}.mlp", f"{hf}.1")
            else:
                m += qkv(f"{ours}.self_attn", f"{hf}.0.SelfAttention")
                m.append((f"{ours}.norm2.weight", [f"{hf}.1.layer_norm.weight"]))
                x = f"{hf}.1.EncDecAttention"
                m += [(f"{ours}.cross_attn.q.weight", [f"{x}.q.weight"]),
                      (f"{ours}.cross_attn.kv.weight", [f"{x}.k.weight", f"{x}.v.weight"]),
                      (f"{ours}.cross_attn.o.weight", [f"{x}.o.weight"])]
                m.append((f"{ours}.norm3.weight", [f"{hf}.2.layer_norm.weight"]))
                m += ff(f"{ours}.mlp", f"{hf}.2")
        m.append((f"{stack}.norm.weight", [f"{stack}.final_layer_norm.weight"]))
    if not cfg.tie_embeddings:
        m.append(("lm_head.weight", ["lm_head.weight"]))
    return m


# ---------------------------------------------------------------- import

def _read_weights(dir: Path) -> dict[str, torch.Tensor]:
    single, index = dir / "model.safetensors", dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise FromzeroError(f"{index} is not a valid safetensors index ({e}); re-download the model") from None
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(read_safetensors(dir / f))
        return out
    if (dir / "pytorch_model.bin").is_file():
        raise FromzeroError(f"{dir} holds only pytorch_model.bin (a pickle, unsafe to load); convert it with "
                            "transformers: T5ForConditionalGeneration.from_pretrained(dir).save_pretrained(dir, "
                            "safe_serialization=True)")
    raise FromzeroError(f"no model.safetensors in {dir}; point to a Hugging Face T5 folder "
                        "(config.json + model.safetensors)")


def load_hf_t5(dir: str | Path, map_location: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> EncoderDecoderLM:
    """EncoderDecoderLM from a local Hugging Face T5 folder (config.json + safetensors)."""
    dir = Path(dir)
    hf_cfg = read_config(dir)
    cfg = config_from_hf(hf_cfg, where=str(dir / "config.json"))
    tensors = _read_weights(dir)
    head = tensors.get("lm_head.weight")
    shared = tensors.get("shared.weight")
    if head is not None and (shared is None or head.shape != shared.shape or not torch.equal(head, shared)):
        cfg.tie_embeddings = False  # a separate output matrix (T5 v1.1 / mT5)
    elif head is not None:
        tensors.pop("lm_head.weight")  # stored, but the same matrix as `shared`

    model = EncoderDecoderLM.empty(cfg, device=map_location)
    own = model.state_dict()
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    for ours, theirs in _name_map(cfg):
        parts = []
        expected_rows = own[ours].shape[0] // len(theirs)
        for name in theirs:
            if name not in tensors:
                raise FromzeroError(f"{dir}: tensor '{name}' is missing; the checkpoint does not match its "
                                    f"config.json ({cfg.n_layer} encoder / {cfg.decoder_layers} decoder layers, "
                                    f"{cfg.feed_forward})")
            t = tensors[name]
            want = (expected_rows, *own[ours].shape[1:])
            if tuple(t.shape) != want:
                raise FromzeroError(f"{dir}: tensor '{name}' has shape {tuple(t.shape)} but config.json implies "
                                    f"{want}; config.json and the weights come from different models")
            parts.append(t)
            used.add(name)
        state[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    unexpected = sorted(set(tensors) - used - set(_IGNORED))
    if unexpected:
        raise FromzeroError(f"{dir}: unexpected tensor '{unexpected[0]}'"
                            + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                            + "; this is not a plain T5ForConditionalGeneration checkpoint (unsupported architecture)")
    result = model.load_state_dict(state, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
    model._tie()
    if dtype is not None:
        model.to(dtype)
    return model


# ---------------------------------------------------------------- export

def save_hf_t5(model: EncoderDecoderLM, dir: str | Path) -> Path:
    """Write config.json + model.safetensors that `T5ForConditionalGeneration.from_pretrained(dir)` loads."""
    from fromzero.modules.wrappers import unwrap

    model = unwrap(model)
    if not isinstance(model, EncoderDecoderLM):
        raise TypeError(f"save_hf_t5 expects an EncoderDecoderLM, got {type(model).__name__}")
    cfg = model.config
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _name_map(cfg):
        for name, part in zip(theirs, own[ours].chunk(len(theirs), dim=0)):
            out[name] = part.contiguous().clone()
    save_file(out, str(dir / "model.safetensors"), metadata={"format": "pt"})
    (dir / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n", encoding="utf-8")
    return dir


# ---------------------------------------------------------------- either format

def load_seq2seq_model(dir: str | Path, map_location: str | torch.device = "cpu") -> EncoderDecoderLM:
    """An EncoderDecoderLM from a Hugging Face T5 folder or a fromzero training checkpoint folder."""
    dir = Path(dir)
    data = read_config(dir)
    if data.get("model_type") is not None:
        return load_hf_t5(dir, map_location=map_location)
    cfg = build(T5Config, data, where=str(dir / "config.json"))
    model = EncoderDecoderLM.empty(cfg, device=map_location)
    load_weights(model, dir)
    return model
