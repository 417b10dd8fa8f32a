"""Save/load a DecoderLM as `model.safetensors` + `config.json` (never pickle).

Tied weights: safetensors refuses two names for one tensor, so a tied LM head is saved once
(as tok_emb.weight) and re-tied by construction on load. Wrapped models (torch.compile's
`_orig_mod.`, DDP's `module.`) are unwrapped so checkpoints are portable.
Atomicity (write to a temp dir, rename) is the caller's job; this writes into `dir` directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fromzero.config import build, to_dict
from fromzero.errors import FromzeroError
from fromzero.model.config import ModelConfig
from fromzero.model.decoder import DecoderLM

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "fromzero-decoder"  # config.json "model_type"; HF folders carry their own (gpt2, llama, ...)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip torch.compile / DDP / FSDP-style wrappers to the bare module."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without wrapper prefixes and without the tied LM head duplicate."""
    out = {}
    for key, t in unwrap(model).state_dict().items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key.replace("._orig_mod.", ".")] = t
    base = unwrap(model)
    if getattr(base, "config", None) is not None and getattr(base.config, "tie_embeddings", False):
        out.pop("lm_head.weight", None)
    return out


def save_model(model: nn.Module, dir: str | Path) -> Path:
    """Write `dir/model.safetensors` and `dir/config.json`; returns the directory."""
    from safetensors.torch import save_file

    base = unwrap(model)
    if not isinstance(base, DecoderLM):
        raise TypeError(f"save_model expects a DecoderLM (possibly compiled/DDP-wrapped), got {type(base).__name__}")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in clean_state_dict(base).items()}
    save_file(tensors, str(dir / WEIGHTS), metadata={"format": "pt"})
    config = {"model_type": FORMAT, **to_dict(base.config)}
    (dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dir


def read_config(dir: Path) -> dict:
    """config.json of a model folder as a dict, with one clear error for a missing or broken file."""
    path = dir / CONFIG
    if not path.is_file():
        raise FromzeroError(f"{path} not found; a model folder needs config.json next to model.safetensors "
                            "(written by save_model, or a Hugging Face model folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FromzeroError(f"{path} is not valid JSON ({e}); the folder is corrupt, re-save or re-download it") from None
    if not isinstance(data, dict):
        raise FromzeroError(f"{path} must hold a JSON object; the folder is corrupt, re-save or re-download it")
    return data


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning truncation/corruption into one clear FromzeroError."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FromzeroError(f"{path} not found; the checkpoint is incomplete (was the save interrupted?)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # SafetensorError, OSError, ...: all mean an unreadable file
        raise FromzeroError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "it is probably truncated or corrupt: re-save or re-download it"
        ) from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                      skip: tuple[str, ...] = (), hint: str = "") -> None:
    """Copy `state` into `model`, naming any missing/unexpected key or shape mismatch."""
    own = {k: v for k, v in model.state_dict().items() if k not in skip}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"unexpected tensors {_few(unexpected)}")
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        raise FromzeroError(
            f"{source} does not match the model in its config.json: {'; '.join(parts)}. "
            + (hint or "It was not written by fromzero's save_model for this config; re-save it, "
               "or for a Hugging Face folder use fromzero.model.hf.load_hf")
        )
    for key, t in state.items():
        if t.shape != own[key].shape:
            raise FromzeroError(
                f"{source}: tensor '{key}' has shape {tuple(t.shape)} but the config implies {tuple(own[key].shape)}; "
                "config.json and model.safetensors come from different models, re-save the checkpoint"
            )
    model.load_state_dict(state, strict=False)


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_model(dir: str | Path, map_location: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> DecoderLM:
    """Rebuild a DecoderLM from a save_model directory (Hugging Face GPT-2/Llama/Qwen2 folders
    are recognised by their config.json and imported through fromzero.model.hf)."""
    dir = Path(dir)
    if not dir.is_dir():
        raise FromzeroError(f"model directory {dir} not found; pass a directory containing model.safetensors and config.json")
    data = read_config(dir)
    model_type = data.pop("model_type", None)
    if model_type != FORMAT:
        from fromzero.model import hf

        if model_type in hf.SUPPORTED:
            return hf.load_hf(dir, map_location=map_location, dtype=dtype)
        raise FromzeroError(
            f"{dir / CONFIG} has model_type {model_type!r}, not a fromzero model; "
            f"fromzero loads its own checkpoints and Hugging Face {', '.join(hf.SUPPORTED)} folders"
        )
    cfg = build(ModelConfig, data, where="config.json")
    state = read_safetensors(dir / WEIGHTS)
    model = DecoderLM.empty(cfg, device=map_location, dtype=dtype)
    load_state_strict(model, state, dir / WEIGHTS, skip=("lm_head.weight",) if cfg.tie_embeddings else ())
    return model
