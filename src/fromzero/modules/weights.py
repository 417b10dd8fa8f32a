"""Weights of any nn.Module as safetensors: clean names, tied tensors stored once, never pickle.

Used for training checkpoints and for task models whose class has no folder format of its own;
a model with `save_pretrained(dir)` (fromzero's decoder and encoder) writes its own format instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fromzero.config import to_dict
from fromzero.errors import FromzeroError
from fromzero.modules.wrappers import unwrap

WEIGHTS = "model.safetensors"
CONFIG = "config.json"

def follow_umask(path: str | Path, mode: int = 0o666) -> None:
    """Give a written file the mode the umask asks for: safetensors' writer makes every file 0600,
    which hides weights from the group or other users that a shared umask means to share them with."""
    os.chmod(path, mode & ~_umask())


def _umask() -> int:
    try:  # read-only on Linux; setting and restoring os.umask would race with other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def clean_key(key: str) -> str:
    """Drop torch.compile's `_orig_mod.` wherever it sits ("blocks.0._orig_mod.attn.w" -> "blocks.0.attn.w").

    DDP's `module.` is removed by `unwrap` on the object instead: a user's own submodule may
    legitimately be called "module".
    """
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    return ".".join(parts)


def save_weights(model: nn.Module, directory: str | Path) -> Path:
    """Write model.safetensors (+ config.json) for `model`, unwrapped and with shared tensors stored once.

    A model with a `save_pretrained(dir)` method (fromzero's decoder and encoder) writes its own
    folder format; any other module is written here. safetensors refuses tensors that share memory, so a tied weight (embedding = output head) is
    written under its first name and the other names are listed in the file's metadata ("aliases").
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if callable(getattr(model, "save_pretrained", None)):  # a format its loader reads (model_type)
        model.save_pretrained(directory)
        return directory / WEIGHTS
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}  # (storage, offset, shape, stride) -> name written
    for key, t in model.state_dict().items():
        name = clean_key(key)
        t = t.detach()
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        tensors[name] = t.to("cpu").contiguous()
    # Different views of one storage (rare) still share memory; give each its own copy.
    storages: set[int] = set()
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in storages:
            tensors[name] = t.clone()
        storages.add(ptr)
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt", "aliases": json.dumps(aliases)})
    follow_umask(directory / WEIGHTS)
    config = _config_dict(model)
    if config is not None:
        (directory / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return directory / WEIGHTS


def _fill_tied(tensors: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """A file from another writer may store a tied weight once without our alias list: fill the
    missing name from the name it shares memory with in this model."""
    by_view: dict[tuple, list[str]] = {}
    for name, t in own.items():
        if t.numel():
            view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            by_view.setdefault(view, []).append(name)
    for names in by_view.values():
        present = [n for n in names if n in tensors]
        if present:
            for n in names:
                tensors.setdefault(n, tensors[present[0]])


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg):
        return to_dict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    if hasattr(cfg, "to_dict"):  # a transformers PretrainedConfig
        return cfg.to_dict()
    return None


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load model.safetensors from `directory` into `model` (which may be compiled/DDP-wrapped)."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise FromzeroError(f"no {WEIGHTS} in {directory}; point to a checkpoint folder written by fromzero")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise FromzeroError(f"{path} is damaged or not a safetensors file ({e}); delete that checkpoint "
                            "folder or restore it from a copy") from None
    for alias, target in json.loads(meta.get("aliases", "{}")).items():
        if target in tensors:
            tensors[alias] = tensors[target]
    model = unwrap(model)
    state = model.state_dict()
    own = {clean_key(k): k for k in state}
    _fill_tied(tensors, {clean_key(k): v for k, v in state.items()})
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise FromzeroError(
            f"{path} does not match this model (missing: {', '.join(missing[:4]) or 'none'}; unexpected: "
            f"{', '.join(unexpected[:4]) or 'none'}); build the model with the checkpoint's config.json"
        )
    try:
        model.load_state_dict({own[k]: v for k, v in tensors.items()}, strict=True)
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()[-1].strip()
        raise FromzeroError(f"{path} does not fit this model ({first}); build the model with the "
                            "checkpoint's config.json") from None
