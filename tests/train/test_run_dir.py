"""One run per out_dir: a fresh start over an existing run is refused unless --resume or --overwrite
says which is meant, and a second process training into the same folder is stopped by the lock.

The trainer runs a bigram LM over real text (the bytes of fromzero/config.py) for a few steps.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fromzero.config
from fromzero.errors import FromzeroError
from fromzero.objectives import causal_lm
from fromzero.train import run_dir
from fromzero.train.metrics_log import read_metrics
from fromzero.train.trainer import TrainConfig, Trainer

TOKENS = np.frombuffer(Path(fromzero.config.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)
SRC = Path(fromzero.config.__file__).parents[1]  # what a child process needs on sys.path


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(256, 256)

    def forward(self, input_ids, labels=None):
        logits = self.table(input_ids)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return logits, loss


def batches(n=8, t=16):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        starts = rng.integers(0, len(TOKENS) - t - 1, size=4)
        x = torch.from_numpy(np.stack([TOKENS[s : s + t + 1] for s in starts]))
        out.append({"input_ids": x[:, :-1], "labels": x[:, 1:]})
    return out


def trainer(out_dir, evals=True, **cfg) -> Trainer:
    torch.manual_seed(0)
    data = batches()
    return Trainer(Bigram(), causal_lm, data, data[:2] if evals else None,
                   TrainConfig(**{"out_dir": str(out_dir), "max_steps": 4, "eval_every": 2, "warmup_steps": 1,
                                  "log_every": 1, "precision": "fp32", "lr": 1e-2, **cfg}))


def test_fresh_start_over_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    first = trainer(out).fit()
    before = {p: p.read_bytes() for p in (out / "metrics.jsonl", out / "checkpoints" / "best" / "model.safetensors",
                                          out / "checkpoints" / "last" / "trainer_state.json")}
    with pytest.raises(FromzeroError) as info:
        trainer(out).fit()
    msg = str(info.value)
    assert "already holds a run" in msg and "--resume" in msg and "--overwrite" in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in before} == before  # nothing of the first run touched

    assert trainer(out).fit(resume=True)["resumed_from_step"] == first["steps"]  # resume is allowed
    s = trainer(out, evals=False, overwrite=True).fit()  # overwrite replaces the run, stale best included
    assert s["steps"] == 4 and s["resumed_from_step"] is None and s["best_checkpoint"] is None
    assert not (out / "checkpoints" / "best").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"] == [1, 2, 3, 4]


def test_an_empty_folder_or_an_empty_metrics_file_is_no_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.jsonl").write_text("")  # a run that died before its first log line
    (tmp_path / "tokenizer.json").write_text("{}")
    assert not run_dir.holds_run(tmp_path)
    run_dir.check_fresh_start(tmp_path, resume=False, overwrite=False)
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    assert run_dir.holds_run(tmp_path)


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from fromzero.train.run_dir import claim
    with claim({out!r}, resume=False, overwrite=False):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_second_run_in_the_same_folder_names_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=str(SRC), out=str(out))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FromzeroError, match=rf"{out} is in use by pid {holder.pid} on .*wait for that run"):
            trainer(out).fit()
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
        with run_dir.claim(out, resume=False, overwrite=False, main=False):  # torchrun ranks > 0 do not lock
            pass
    finally:
        holder.kill()  # like kill -9: the lock goes with the process
        holder.wait()
    assert trainer(out).fit()["steps"] == 4


def test_claims_nest_in_one_process_and_release(tmp_path):
    with run_dir.claim(tmp_path, resume=False, overwrite=False):
        with run_dir.claim(tmp_path, resume=False, overwrite=False):  # the recipe, then its Trainer
            pass
        assert str(tmp_path.resolve()) in run_dir._held
    assert not run_dir._held
    assert "pid " in (tmp_path / run_dir.LOCK).read_text()


def test_disk_full_while_logging_is_one_line(tmp_path, monkeypatch):
    from fromzero.train import metrics_log

    t = trainer(tmp_path / "run", max_steps=6, save_every=2, eval_every=0)
    real_log, calls = metrics_log.MetricsLog.log, {"n": 0}

    def log(self, event, step, **values):
        calls["n"] += 1
        if step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_log(self, event, step, **values)

    monkeypatch.setattr(metrics_log.MetricsLog, "log", log)
    with pytest.raises(FromzeroError, match=r"^disk full while writing .*--resume \(the last good checkpoint is kept "
                                            r"at .*checkpoints/last\)$"):
        t.fit()
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 2
