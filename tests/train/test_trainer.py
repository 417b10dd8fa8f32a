"""The training loop, checkpoints and resume, on a tiny causal LM over real text (this repo's own source).

The model and batch source are defined here so the trainer is tested on its own, independent of
fromzero.model and fromzero.data.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import fromzero.config
from fromzero.errors import FromzeroError
from fromzero.objectives import causal_lm
from fromzero.train import checkpoint as ckpt
from fromzero.train import precision as prec
from fromzero.train.metrics_log import read_metrics
from fromzero.train.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine
from fromzero.train.trainer import TrainConfig, Trainer

# Real text as bytes (vocab 256): the source of fromzero/config.py.
TOKENS = np.frombuffer(Path(fromzero.config.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)
SPLIT = int(len(TOKENS) * 0.85)
T = 16


@dataclass
class TinyConfig:
    vocab_size: int = 256
    d_model: int = 32
    max_seq_len: int = T
    dropout: float = 0.0


class TinyLM(nn.Module):
    """One pre-norm transformer block with a tied output head: (logits, loss) like DecoderLM."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, d)
        self.norm1, self.norm2, self.norm_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        for emb in (self.tok_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)  # small logits at init: loss starts near ln(256)

    def forward(self, input_ids, labels=None):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        q, k, v = self.qkv(self.norm1(x)).unsqueeze(1).chunk(3, dim=-1)
        x = x + self.drop(self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)))
        x = x + self.drop(self.mlp(self.norm2(x)))
        logits = self.lm_head(self.norm_f(x))
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return logits, loss


class Windows:
    """Random windows, deterministic given (seed, step); state_dict() is the next batch's index."""

    def __init__(self, tokens, batch_size=8, seed=0, rank=0, world_size=1):
        self.tokens, self.batch_size, self.seed = tokens, batch_size, seed
        self.rank, self.world_size, self.step = rank, world_size, 0

    def batch(self, step):
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - T - 1, size=self.batch_size * self.world_size)
        x = np.stack([self.tokens[s : s + T + 1] for s in starts[self.rank :: self.world_size]])
        return {"input_ids": torch.from_numpy(x[:, :-1].copy()), "labels": torch.from_numpy(x[:, 1:].copy())}

    def __iter__(self):
        while True:
            b = self.batch(self.step)
            self.step += 1  # before yielding, so state_dict() between steps names the next batch
            yield b

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def eval_list(n=4, batch_size=8):
    val = TOKENS[SPLIT:]
    out = []
    for i in range(n):
        x = np.stack([val[(i * batch_size + j) * T : (i * batch_size + j) * T + T + 1] for j in range(batch_size)])
        out.append({"input_ids": torch.from_numpy(x[:, :-1].copy()), "labels": torch.from_numpy(x[:, 1:].copy())})
    return out


def make_trainer(tmp_path, objective=causal_lm, dropout=0.0, init_seed=0, batches=None, evals="default", **cfg):
    torch.manual_seed(init_seed)
    model = TinyLM(TinyConfig(dropout=dropout))
    defaults = dict(out_dir=str(tmp_path / "run"), max_steps=10, lr=3e-3, warmup_steps=2, eval_every=5,
                    log_every=1, precision="fp32")
    batches = Windows(TOKENS[:SPLIT]) if batches is None else batches
    return Trainer(model, objective, batches, eval_list() if evals == "default" else evals,
                   TrainConfig(**{**defaults, **cfg}))


def train_losses(metrics_path):
    return {r["step"]: r["loss"] for r in read_metrics(metrics_path) if r["event"] == "train"}


# ---------------------------------------------------------------------------------------------- tests

def test_loss_goes_down_and_artifacts_are_written(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=60, eval_every=20, log_every=5)
    before = trainer.evaluate()
    s = trainer.fit()
    assert before > 5.0  # ~ln(256) at init
    assert s["val_loss"] < before - 1.5 and s["train_loss"] < before - 1.5
    assert s["steps"] == 60 and s["precision"] == "fp32" and s["stopped"] == "max_steps"
    assert s["val_perplexity"] == pytest.approx(math.exp(s["val_loss"]))
    assert s["best_val_loss"] <= s["val_loss"] + 1e-12
    assert s["tokens_seen"] == 60 * 8 * T and s["tokens_per_sec"] > 0 and s["wall_seconds"] > 0

    records = read_metrics(s["metrics"])
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert all({"loss", "lr", "tokens_per_sec", "grad_norm", "tokens_seen"} <= set(r) for r in train)
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    assert Path(s["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    last = Path(s["checkpoint"])
    assert {p.name for p in last.iterdir()} == {"model.safetensors", "config.json", "trainer_state.json", "optimizer.pt"}
    assert json.loads((last / "config.json").read_text())["d_model"] == 32
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 60 and state["ranks"][0]["data"] == {"step": 60}
    assert (Path(s["best_checkpoint"]) / "model.safetensors").is_file()
    assert not [p for p in last.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_warmup_then_cosine_to_min():
    f = warmup_cosine(warmup_steps=10, max_steps=100, min_lr_ratio=0.1)
    lrs = [f(s) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[9:100], lrs[10:100]))  # cosine falls
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)  # half-way through the cosine
    assert lrs[100] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    # The scheduler applies it to the optimizer's groups: the first step runs at lr * f(0).
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    sched = build_scheduler(opt, 10, 100, 0.1)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs[:100])


def test_param_groups_exclude_norms_biases_embeddings():
    model = TinyLM(TinyConfig())
    model.mlp[0].weight.requires_grad_(False)  # frozen: in no group
    decay, plain = param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert decay_names == {"qkv.weight", "proj.weight", "mlp.2.weight"}
    assert {"tok_emb.weight", "pos_emb.weight", "norm1.weight", "norm1.bias", "qkv.bias", "mlp.2.bias"} <= plain_names
    assert "lm_head.weight" not in decay_names | plain_names  # tied: the embedding, counted once
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(decay_names | plain_names) == sorted(trainable) and not decay_names & plain_names
    assert len(build_optimizer(model, lr=1e-3).param_groups) == 2


def test_resume_continues_the_same_loss_curve(tmp_path):
    cfg = dict(max_steps=10, grad_accum=2, eval_every=3, save_every=4, dropout=0.1)
    full = make_trainer(tmp_path / "a", **cfg).fit()
    expected = train_losses(full["metrics"])
    assert len(expected) == 10

    # Same run, killed by an error in the middle of step 7 (last checkpoint: step 4).
    calls = {"n": 0}

    def crashing(model, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 2 * 6 + 1:
                raise KeyboardInterrupt
        return causal_lm(model, batch)

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "b", objective=crashing, **cfg).fit()
    # Fresh process state: different model init, fresh batch source, scrambled global RNG.
    torch.manual_seed(999)
    np.random.seed(999)
    resumed = make_trainer(tmp_path / "b", init_seed=123, **cfg)
    s = resumed.fit(resume=True)

    got = train_losses(s["metrics"])
    assert sorted(got) == list(range(1, 11))  # metrics continued: every step once
    for step in range(5, 11):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step  # bit-exact on this CPU
    assert s["resumed_from_step"] == 4 and s["tokens_seen"] == full["tokens_seen"]
    assert s["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    assert s["best_val_loss"] == pytest.approx(full["best_val_loss"], abs=1e-6)
    for (n, a), b in zip(full_model_params(tmp_path / "a"), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=n)


def full_model_params(run_root):
    model = TinyLM(TinyConfig(dropout=0.1))
    ckpt.load_checkpoint(run_root / "run" / "checkpoints" / "last", model)
    return list(model.named_parameters())


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = TinyLM(TinyConfig())
    opt = build_optimizer(model, lr=1e-2)
    target = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(target, model, opt, None, {"step": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)  # dies after model.safetensors, before optimizer.pt
    with pytest.raises(OSError):
        ckpt.save_checkpoint(target, model, opt, None, {"step": 2})
    monkeypatch.undo()
    # Killed between the two renames (old folder moved aside, new one not yet in place).
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(target, model, opt, None, {"step": 3})
    monkeypatch.undo()
    assert not target.exists()  # the worst moment: only the aside copy exists

    fresh = TinyLM(TinyConfig())
    fresh_opt = build_optimizer(fresh, lr=1e-2)
    state = ckpt.load_checkpoint(target, fresh, fresh_opt)
    assert state == {"step": 1}
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]  # no debris after a good save
    ckpt.save_checkpoint(target, model, opt, None, {"step": 4})
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's inductor imports
def test_checkpoint_has_no_compile_prefixes(tmp_path):
    model = TinyLM(TinyConfig())
    compiled = torch.compile(model)  # never run: wrapping is enough to get `_orig_mod.` names
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt.save_checkpoint(tmp_path / "c", compiled)
    with safe_open(str(tmp_path / "c" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k or k.startswith("module.") for k in keys)
    assert "lm_head.weight" not in keys and "tok_emb.weight" in keys  # tied weight stored once
    other = TinyLM(TinyConfig())
    ckpt.load_checkpoint(tmp_path / "c", torch.compile(other))  # loads into a wrapped model too
    torch.testing.assert_close(other.lm_head.weight, model.tok_emb.weight)
    assert other.lm_head.weight is other.tok_emb.weight


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = TinyLM(TinyConfig())
    ckpt.save_checkpoint(tmp_path / "c", model)
    with pytest.raises(FromzeroError, match="does not match|does not fit"):
        ckpt.load_checkpoint(tmp_path / "c", TinyLM(TinyConfig(d_model=16)))
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FromzeroError, match="damaged"):
        ckpt.load_checkpoint(tmp_path / "c", model)
    with pytest.raises(FromzeroError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope", model)


def test_bf16_request_falls_back_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prec, "bf16_supported", lambda device_type="cpu": False)
    assert prec.resolve_precision("auto") == "fp32"
    assert capsys.readouterr().err == ""  # auto falls back silently
    trainer = make_trainer(tmp_path, precision="bf16")
    assert trainer.precision == "fp32"
    lines = [line for line in capsys.readouterr().err.splitlines() if "bf16" in line]
    assert len(lines) == 1 and "fp32" in lines[0]
    monkeypatch.setattr(prec, "bf16_supported", lambda device_type="cpu": True)
    assert prec.resolve_precision("auto") == "bf16" and prec.resolve_precision("fp32") == "fp32"


@pytest.mark.skipif(not prec.bf16_supported("cpu"), reason="no native bf16 on this CPU")
def test_bf16_autocast_trains(tmp_path):
    s = make_trainer(tmp_path, precision="auto", max_steps=20, eval_every=0, log_every=5).fit()
    assert s["precision"] == "bf16" and s["val_loss"] < 5.0 and s["nonfinite_steps"] == 0


def test_nonfinite_loss_is_skipped_then_stops(tmp_path, capsys):
    def nan_at(steps):
        calls = {"n": 0}

        def objective(model, batch):
            out = causal_lm(model, batch)
            if model.training:
                calls["n"] += 1
                if calls["n"] in steps:
                    out["loss"] = out["loss"] * float("nan")
            return out

        return objective

    s = make_trainer(tmp_path / "a", objective=nan_at({3}), max_steps=8).fit()
    assert s["nonfinite_steps"] == 1 and s["steps"] == 8 and math.isfinite(s["train_loss"])
    events = [r for r in read_metrics(s["metrics"]) if r["event"] == "nonfinite"]
    assert [(r["step"], r["loss"]) for r in events] == [(3, None)]
    assert "step 3: loss nan is not finite; skipped" in capsys.readouterr().err

    trainer = make_trainer(tmp_path / "b", objective=nan_at(set(range(1, 100))), max_steps=50)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(FromzeroError, match=r"diverged.*5 steps in a row.*lower train\.lr"):
        trainer.fit()
    last = tmp_path / "b" / "run" / "checkpoints" / "last"
    fresh = TinyLM(TinyConfig())
    state = ckpt.load_checkpoint(last, fresh)
    assert state["step"] == 5 and state["nonfinite_steps"] == 5
    for k, v in fresh.state_dict().items():  # every update was skipped
        torch.testing.assert_close(v, initial[k], rtol=0, atol=0)


def test_empty_training_data_is_a_clear_error(tmp_path):
    with pytest.raises(FromzeroError, match="no batches"):
        make_trainer(tmp_path, batches=[]).fit()


def test_early_stopping_keeps_best(tmp_path):
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    s = make_trainer(tmp_path, evals=lambda model: {"val_loss": next(vals)}, max_steps=20, eval_every=2,
                     early_stop_patience=2).fit()
    assert s["stopped"] == "early_stop" and s["steps"] == 8
    assert s["best_val_loss"] == 2.0 and s["val_loss"] == 2.6
    best = ckpt.load_checkpoint(s["best_checkpoint"])
    assert best["step"] == 4 and best["best_val_loss"] == 2.0
    assert ckpt.load_checkpoint(s["checkpoint"])["step"] == 8


def test_time_budget_stops_cleanly_with_checkpoint(tmp_path):
    s = make_trainer(tmp_path, max_steps=1000, max_minutes=1e-9, eval_every=0).fit()
    assert s["stopped"] == "time_budget" and s["steps"] == 1
    assert ckpt.load_checkpoint(s["checkpoint"])["step"] == 1 and s["val_loss"] is not None


class Halves(Windows):
    """Each big batch of Windows(batch_size=8) as two micro-batches of 4."""

    def __iter__(self):
        for b in Windows(self.tokens, 8, self.seed):
            yield {k: v[:4] for k, v in b.items()}
            yield {k: v[4:] for k, v in b.items()}


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_grad_accumulation_matches_one_big_batch(tmp_path):
    def record_grads(trainer):
        grads, step = [], trainer.optimizer.step

        def wrapped(*a, **k):
            grads.append([p.grad.clone() for p in trainer.model.parameters()])
            return step(*a, **k)

        trainer.optimizer.step = wrapped
        return grads

    big = make_trainer(tmp_path / "a", max_steps=2, evals=None)
    acc = make_trainer(tmp_path / "b", max_steps=2, evals=None, grad_accum=2, batches=Halves(TOKENS[:SPLIT]))
    ga, gb = record_grads(big), record_grads(acc)
    sa, sb = big.fit(), acc.fit()
    assert train_losses(sa["metrics"]) == pytest.approx(train_losses(sb["metrics"]), abs=1e-6)
    assert len(ga) == len(gb) == 2
    for step_a, step_b in zip(ga, gb):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert sa["tokens_seen"] == sb["tokens_seen"]


def test_causal_lm_objective():
    model = TinyLM(TinyConfig())
    batch = eval_list(1)[0]
    out = causal_lm(model, batch)
    logits, _ = model(batch["input_ids"])
    ref = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
    assert set(out) == {"loss"} and out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- DDP

def _ddp_worker(rank, world, port, out_dir, result_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different inits: DDP must broadcast rank 0's weights
    model = TinyLM(TinyConfig(dropout=0.1))
    cfg = TrainConfig(out_dir=out_dir, max_steps=4, grad_accum=2, lr=3e-3, warmup_steps=1, eval_every=2,
                      log_every=1, precision="fp32")
    s = Trainer(model, causal_lm, Windows(TOKENS[:SPLIT], 4, rank=rank, world_size=world), eval_list(3), cfg).fit()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{result_dir}/rank{rank}.pt")
    with open(f"{result_dir}/rank{rank}.json", "w") as f:
        json.dump(s, f)


def test_ddp_two_processes_keep_identical_params(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_dir = str(tmp_path / "run")
    # fork: the children reuse this process's imports (spawn would re-import torch: ~5 s more).
    mp.start_processes(_ddp_worker, args=(2, port, out_dir, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    p0, p1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in p0:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0, msg=k)
    s0, s1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert s0["val_loss"] == s1["val_loss"] and s0["world_size"] == 2
    assert s0["tokens_seen"] == 4 * 2 * 4 * 2 * T  # steps x accum x per-rank batch x ranks x T
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert len(state["ranks"]) == 2 and state["ranks"][1]["data"] == {"step": 8}
    assert state["ranks"][0]["rng"]["torch"] != state["ranks"][1]["rng"]["torch"]  # per-rank dropout streams
    assert [r["step"] for r in read_metrics(s0["metrics"]) if r["event"] == "train"] == [1, 2, 3, 4]
