"""Checkpoint writes under disk trouble: disk full, a read-only out_dir, file modes that follow the umask.

Each failure must be one clear line (FromzeroError) and leave the previous good checkpoint loadable.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from torch import nn

from fromzero.errors import FromzeroError
from fromzero.train import checkpoint as ckpt
from fromzero.train.optim import build_optimizer
from fromzero.train.trainer import TrainConfig


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def saved_then_changed(target):
    """A good checkpoint at `target` (step 1), then the model moved on: returns (model, optimizer, saved weights)."""
    model = small_model()
    opt = build_optimizer(model, lr=1e-2)
    ckpt.save_checkpoint(target, model, opt, None, {"step": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model, opt, saved


def assert_intact(target, saved):
    fresh = small_model(seed=1)
    state = ckpt.load_checkpoint(target, fresh, build_optimizer(fresh, lr=1e-2))
    assert state == {"step": 1}
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary debris


def raise_oserror(code):
    def boom(*a, **k):
        raise OSError(code, os.strerror(code), str(a[-1]) if a else None)

    return boom


@pytest.mark.parametrize("where", ["weights", "rename"])
def test_disk_full_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, where):
    target = tmp_path / "checkpoints" / "last"
    model, opt, saved = saved_then_changed(target)
    if where == "weights":
        monkeypatch.setattr("fromzero.modules.weights.save_file", raise_oserror(errno.ENOSPC))
    else:  # the new folder written, the old one moved aside, then the final rename fails
        real_replace, calls = os.replace, []

        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            real_replace(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(FromzeroError) as info:
        ckpt.save_checkpoint(target, model, opt, None, {"step": 2})
    msg = str(info.value)
    assert msg.startswith("disk full while writing ") and str(target) in msg
    assert "--resume" in msg and f"the last good checkpoint is kept at {target}" in msg
    assert "\n" not in msg
    monkeypatch.undo()
    assert target.is_dir()  # in place at once, not only after the next find_checkpoint
    assert_intact(target, saved)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_out_dir_is_one_line(tmp_path, monkeypatch, code):
    target = tmp_path / "checkpoints" / "last"
    model, opt, saved = saved_then_changed(target)
    monkeypatch.setattr(torch, "save", raise_oserror(code))
    with pytest.raises(FromzeroError, match=r"is not writable.*train\.out_dir") as info:
        ckpt.save_checkpoint(target, model, opt, None, {"step": 2})
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert_intact(target, saved)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (the EROFS case above covers it)")
def test_read_only_folder_is_one_line(tmp_path):
    target = tmp_path / "checkpoints" / "last"
    model, opt, saved = saved_then_changed(target)
    target.parent.chmod(0o500)
    try:
        with pytest.raises(FromzeroError, match="is not writable"):
            ckpt.save_checkpoint(target, model, opt, None, {"step": 2})
    finally:
        target.parent.chmod(0o755)
    assert_intact(target, saved)


def test_truncated_optimizer_file_names_the_file(tmp_path):
    target = tmp_path / "last"
    model = small_model()
    ckpt.save_checkpoint(target, model, build_optimizer(model, lr=1e-2), None, {"step": 1})
    opt_file = target / ckpt.OPTIMIZER
    opt_file.write_bytes(opt_file.read_bytes()[:200])
    with pytest.raises(FromzeroError, match=rf"{opt_file} is damaged.*best|{opt_file} is damaged.*--overwrite"):
        ckpt.load_checkpoint(target, model, build_optimizer(model, lr=1e-2))


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        model = small_model()
        target = ckpt.save_checkpoint(tmp_path / "checkpoints" / "last", model, build_optimizer(model, lr=1e-2),
                                      None, {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert modes == {name: 0o644 for name in modes} and "model.safetensors" in modes


def test_negative_seed_is_rejected():
    with pytest.raises(FromzeroError, match=r"train\.seed must be 0 or more, got -1"):
        TrainConfig(seed=-1)
