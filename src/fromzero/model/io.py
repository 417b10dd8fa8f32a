"""Model folders on disk: `model.safetensors` + `config.json` (never pickle), for every family.

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

from fromzero.errors import FromzeroError
from fromzero.modules.weights import clean_key, follow_umask
from fromzero.modules.wrappers import unwrap

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without wrapper prefixes and without the tied LM head duplicate."""
    base = unwrap(model)
    out = {clean_key(key): t for key, t in base.state_dict().items()}
    if getattr(base, "config", None) is not None and getattr(base.config, "tie_embeddings", False):
        out.pop("lm_head.weight", None)
    return out


def write_model_folder(dir: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """`dir/model.safetensors` + `dir/config.json`: the one writer every family's save goes through."""
    from safetensors.torch import save_file

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(dir / WEIGHTS), metadata={"format": "pt"})
    follow_umask(dir / WEIGHTS)
    (dir / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
               "or for a Hugging Face folder use fromzero.from_pretrained")
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
