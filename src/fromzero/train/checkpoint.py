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
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fromzero.errors import FromzeroError
from fromzero.modules.weights import follow_umask, load_weights, save_weights
from fromzero.train.run_dir import disk_error

STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"


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
    try:
        return _save(directory, model, optimizer, scheduler, trainer_state, save_extra)
    except OSError as e:  # disk full / read-only: one line; the previous checkpoint is still in place
        kept = find_checkpoint(directory)
        err = disk_error(e, directory, kept)
        if err is None:
            raise
        raise err from None


def _save(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any | None,
          trainer_state: dict[str, Any] | None, save_extra: Callable[[Path], Any] | None) -> Path:
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(directory)
    # os.mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700 whatever the umask, and the
    # renamed folder would keep that mode.
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
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
        for p in tmp.rglob("*"):  # whichever writer made them (safetensors writes 0600)
            if p.is_file():
                follow_umask(p)
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
            raise FromzeroError(f"{path} is damaged or unsafe to load ({type(e).__name__}), so training cannot "
                                "resume from it; start a fresh run with --overwrite, or fine-tune / generate from "
                                f"the weights in {directory} (or checkpoints/best)") from None
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
    try:
        os.replace(new, target)
    except OSError:  # put the good checkpoint back now (a kill here is undone by _recover_interrupted_replace)
        os.replace(old, target)
        raise
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
