"""Checkpoints that survive a crash: a folder written under a temporary name, then renamed.

Layout of `<out_dir>/checkpoints/last/` (and `best/`):

    model.safetensors    weights, clean names (no `_orig_mod.` / `module.`), tied tensors stored once
    config.json          the model's config, when the model has a dataclass `.config`
    trainer_state.json   step, best val loss, RNG states, data position, train config
    optimizer.pt         optimizer + LR scheduler state (tensors and numbers only: torch.load(weights_only=True))
    ...                  anything the caller's `save_extra(dir)` adds, e.g. tokenizer.json

The folder is complete or absent: a save killed half-way leaves the previous checkpoint in place.
Weights are safetensors, never pickles, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fromzero.errors import FromzeroError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"


# ---------------------------------------------------------------- model weights

def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile (`_orig_mod`) and DDP/FSDP-style (`module`) wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def clean_key(key: str) -> str:
    """Drop torch.compile's `_orig_mod.` wherever it sits ("blocks.0._orig_mod.attn.w" -> "blocks.0.attn.w").

    DDP's `module.` is removed by `unwrap_model` on the object instead: a user's own submodule may
    legitimately be called "module".
    """
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    return ".".join(parts)


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A raw state dict taken from a wrapped model -> clean names (leading `module.`, any `_orig_mod.`)."""
    out = {}
    for key, value in state_dict.items():
        key = clean_key(key)
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def save_weights(model: nn.Module, directory: str | Path) -> Path:
    """Write model.safetensors (+ config.json) for `model`, unwrapped and with shared tensors stored once.

    A fromzero DecoderLM goes through `fromzero.model.io.save_model`; any other module is written
    here. safetensors refuses tensors that share memory, so a tied weight (embedding = output head) is
    written under its first name and the other names are listed in the file's metadata ("aliases").
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    native = _native_saver(model)
    if native is not None:  # fromzero's own models: the format `fromzero.model.io.load_model` reads
        native(model, directory)
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
    config = _config_dict(model)
    if config is not None:
        (directory / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return directory / WEIGHTS


def _native_saver(model: nn.Module) -> Callable[[nn.Module, Path], Any] | None:
    """`fromzero.model.io.save_model` for a DecoderLM (it adds config.json's model_type), else None."""
    try:
        from fromzero.model.decoder import DecoderLM
        from fromzero.model.io import save_model
    except ImportError:
        return None
    return save_model if isinstance(model, DecoderLM) else None


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
        from fromzero.config import to_dict

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
    model = unwrap_model(model)
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


# ---------------------------------------------------------------- RNG state as JSON

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states, JSON-serialisable."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---------------------------------------------------------------- whole checkpoints

def _json_default(obj: Any) -> Any:
    """numpy / torch values that data loaders like to put in their state_dict()."""
    if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    raise TypeError(f"trainer state holds a {type(obj).__name__}, which cannot be saved as JSON; "
                    "state_dict() of the batch source must return plain numbers, strings and lists")


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    trainer_state: dict[str, Any] | None = None,
    save_extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (see the module docstring for the layout).

    Everything goes into `<name>.tmp-XXXX` beside the target; only when all files are written is it
    renamed into place, so readers see either the old checkpoint or the new one.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f"{directory.name}.tmp-", dir=directory.parent))
    try:
        save_weights(model, tmp)
        if optimizer is not None:
            state = {"optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None}
            torch.save(state, tmp / OPTIMIZER)
        if trainer_state is not None:
            text = json.dumps(trainer_state, indent=1, allow_nan=False, default=_json_default)
            (tmp / STATE).write_text(text, encoding="utf-8")
        if save_extra is not None:
            save_extra(tmp)
        _fsync_dir_files(tmp)
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def find_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint folder if it exists (after undoing a rename interrupted by a crash), else None."""
    directory = Path(directory)
    _recover_interrupted_replace(directory)
    return directory if directory.is_dir() else None


def load_checkpoint(
    directory: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> dict[str, Any]:
    """Load whatever is passed (weights, optimizer, scheduler) from a checkpoint folder; returns the
    trainer state dict ({} if the folder has none). Clear FromzeroError for missing/damaged files."""
    directory = Path(directory)
    _recover_interrupted_replace(directory)
    if not directory.is_dir():
        raise FromzeroError(f"checkpoint folder {directory} does not exist; check the path or train without resume")
    if model is not None:
        load_weights(model, directory)
    if optimizer is not None:
        path = directory / OPTIMIZER
        if not path.is_file():
            raise FromzeroError(f"no {OPTIMIZER} in {directory}, so training cannot resume from it; "
                                "start a fresh run (or load only the weights)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, foreign pickle, ...
            raise FromzeroError(f"{path} is damaged or unsafe to load ({type(e).__name__}); "
                                "delete that checkpoint folder or start a fresh run") from None
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    path = directory / STATE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise FromzeroError(f"{path} is damaged ({e}); delete that checkpoint folder or start a fresh run") from None


# ---------------------------------------------------------------- atomic folder replacement

def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`. os.replace cannot overwrite a non-empty folder, so the old one is
    first renamed aside; if we die between the two renames, `_recover_interrupted_replace` puts it back."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f"{target.name}.old-{os.getpid()}-{time.time_ns()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted_replace(target: Path) -> None:
    if target.exists():
        return
    olds = sorted(target.parent.glob(f"{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)


def _remove_stale_temps(target: Path) -> None:
    """Leftovers of saves that were killed; the live checkpoint is never touched."""
    _recover_interrupted_replace(target)
    if not target.parent.is_dir():
        return
    for pattern in (f"{target.name}.tmp-*", f"{target.name}.old-*"):
        for p in target.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir_files(directory: Path) -> None:
    """Flush file contents to disk before the rename, so a power cut cannot leave empty files."""
    for p in directory.rglob("*"):
        if p.is_file():
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
