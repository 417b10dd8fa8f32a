"""One training loop for every model and objective.

    trainer = Trainer(model, causal_lm, train_batches, eval_batches, TrainConfig(max_steps=500))
    summary = trainer.fit()            # or fit(resume=True) to continue from checkpoints/last

Each step: `grad_accum` micro-batches (forward under bf16 autocast where supported, backward of
loss/grad_accum), clip the gradient norm, AdamW step, LR schedule step. Around it: periodic eval on
fixed batches, early stopping, best/last checkpoints, a time budget, JSONL metrics, a loss-curve
PNG and a progress bar. A non-finite loss skips the update; several in a row stop the run.

The trainer is generic: `model` is any nn.Module, `objective(model, batch)` returns {"loss": ...},
and `train_batches` is any iterable of batches; if it has state_dict()/load_state_dict() the data
position is checkpointed too, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fromzero.config import to_dict
from fromzero.errors import FromzeroError
from fromzero.train import distributed as D
from fromzero.train.checkpoint import find_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fromzero.train.metrics_log import MetricsLog
from fromzero.train.optim import build_optimizer, build_scheduler
from fromzero.train.plots import plot_losses
from fromzero.train.precision import autocast, resolve_precision
from fromzero.train.run_dir import claim, clear_run, disk_error

MAX_NONFINITE = 5  # consecutive non-finite steps before the run stops


@dataclass
class TrainConfig:
    out_dir: str = "runs/x"
    max_steps: int = 1000
    batch_size: int = 16  # per process and micro-step; used by whoever builds the batches
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 = no clipping
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    eval_every: int = 200  # 0 = evaluate only at the end
    eval_batches: int = 20  # at most this many eval batches are used; 0 = no evaluation
    early_stop_patience: int = 0  # evals without improvement before stopping; 0 = off
    log_every: int = 10
    save_every: int = 0  # 0 = save only at the end (plus best)
    seed: int = 0
    max_minutes: float | None = None  # time budget: stop cleanly, with a checkpoint
    device: str = "auto"  # auto = cuda (one GPU per process) if available, else cpu
    overwrite: bool = False  # a fresh run may replace the run already in out_dir (else resume or refuse)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise FromzeroError(f"train.{key} must be {what}, got {getattr(self, key)!r}")

        need(self.max_steps >= 1, "max_steps", "at least 1")
        need(self.batch_size >= 1, "batch_size", "at least 1")
        need(self.grad_accum >= 1, "grad_accum", "at least 1")
        need(self.lr > 0, "lr", "positive (e.g. 6e-4)")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "between 0 and 1")
        need(self.warmup_steps >= 0, "warmup_steps", "0 or more")
        need(self.weight_decay >= 0, "weight_decay", "0 or more")
        need(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.grad_clip >= 0, "grad_clip", "0 (off) or positive")
        need(self.precision in ("auto", "fp32", "bf16"), "precision", "auto, fp32 or bf16")
        for key in ("eval_every", "eval_batches", "early_stop_patience", "save_every"):
            need(getattr(self, key) >= 0, key, "0 or more")
        need(self.log_every >= 1, "log_every", "at least 1")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes", "positive or null")
        need(self.seed >= 0, "seed", "0 or more")  # numpy's generators refuse negative seeds deep in the data code


Objective = Callable[[nn.Module, Any], "dict[str, torch.Tensor] | torch.Tensor"]
EvalFn = Callable[[nn.Module], "float | dict[str, float]"]


class Trainer:
    """Runs `objective` on `model` over `train_batches`; see the module docstring.

    eval_batches: a list (or iterable) of batches evaluated with `objective` (the first
      `cfg.eval_batches` are used, split across processes), or a function eval_fn(model) returning a
      float or a dict with "val_loss"/"loss", or None for no evaluation.
    save_extra: called with each checkpoint's temporary folder before it is renamed into place,
      to add files such as tokenizer.json.
    """

    def __init__(self, model: nn.Module, objective: Objective, train_batches: Iterable[Any],
                 eval_batches: Iterable[Any] | EvalFn | None = None, cfg: TrainConfig | None = None,
                 save_extra: Callable[[Path], Any] | None = None):
        self.cfg = cfg = cfg or TrainConfig()
        self.objective = objective
        self.train_batches = train_batches
        self.save_extra = save_extra
        self.dist = D.DistributedContext.from_env()
        self._owns_group = D.init_distributed(self.dist)
        self.main = self.dist.is_main
        self.device = _resolve_device(cfg.device, self.dist)

        self.model = model.to(self.device)  # the bare module: optimizer, checkpoints
        self.precision = resolve_precision(cfg.precision, self.device.type, verbose=self.main)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.fwd_model = torch.compile(self.model) if cfg.compile else self.model  # eval uses this
        self.train_model = D.wrap_ddp(self.fwd_model, self.dist)  # training forward/backward uses this

        if eval_batches is None or (callable(eval_batches) and not hasattr(eval_batches, "__iter__")):
            self.eval_fn, self.eval_list = eval_batches, None
        else:
            self.eval_fn, self.eval_list = None, list(eval_batches)[: cfg.eval_batches]

        out = Path(cfg.out_dir)
        self.out_dir = out
        self.ckpt_dir = out / "checkpoints"
        self.metrics_path = out / "metrics.jsonl"
        self.plot_path = out / "loss.png"

        # Loop state (all of it goes into trainer_state.json).
        self.step = 0
        self.best_val: float | None = None
        self.evals_since_best = 0
        self.tokens_seen = 0
        self.nonfinite_steps = 0
        self._batches: Any = None
        self._log: MetricsLog | None = None

    @property
    def has_eval(self) -> bool:
        return self.eval_fn is not None or bool(self.eval_list)

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to `max_steps` (or early stop / time budget); returns a summary dict."""
        try:
            with claim(self.out_dir, resume, self.cfg.overwrite, main=self.main):
                return self._fit(resume)
        except OSError as e:  # disk full / read-only while logging or plotting: one line, checkpoints kept
            err = disk_error(e, None, find_checkpoint(self.ckpt_dir / "last"))
            if err is None:
                raise
            raise err from None
        finally:
            if self._log is not None:
                self._log.close()
            if self._owns_group:
                D.cleanup()

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        resumed = self._restore() if resume else False
        if not resumed:
            if self.main and cfg.overwrite and not resume:
                clear_run(self.out_dir)
            self._seed(cfg.seed + self.dist.rank)
        if self.main:
            self._log = MetricsLog(self.metrics_path, resume_step=self.step if resumed else None,
                                   tensorboard_dir=self.out_dir / "tensorboard")
            self._say(f"training on {self.device.type} x{self.dist.world_size}, precision {self.precision}, "
                      f"steps {self.step}->{cfg.max_steps}, out_dir {self.out_dir}")
        self._batches = iter(self.train_batches)

        start_step, session_tokens, step_seconds, first = self.step, 0, 0.0, (0, 0.0)
        window = _Window()
        stopped, last_eval, last_save, val = "max_steps", None, None, None
        consecutive_bad = 0
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.main, unit="step",
                   dynamic_ncols=True, file=sys.stderr)
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                loss, extras, ntok, grad_norm = self._train_step()
                dt = time.perf_counter() - t0
                self.step += 1
                self.tokens_seen += ntok
                if self.step == start_step + 1:  # the first step includes warm-up (and compilation)
                    first = (ntok, dt)
                session_tokens += ntok
                step_seconds += dt
                window.add(loss, extras, ntok, dt, lr, grad_norm)
                bar.update(1)

                if math.isfinite(loss) and math.isfinite(grad_norm):
                    consecutive_bad = 0
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{window.tokens_per_sec():,.0f}",
                                    refresh=False)
                else:
                    consecutive_bad += 1
                    self.nonfinite_steps += 1
                    self._on_nonfinite(loss, grad_norm, consecutive_bad, window)

                if self.step % cfg.log_every == 0:
                    self._log_train(window)
                if self.has_eval and cfg.eval_every and self.step % cfg.eval_every == 0:
                    val, last_eval = self._eval_and_track(), self.step
                    if cfg.early_stop_patience and self.evals_since_best >= cfg.early_stop_patience:
                        stopped = "early_stop"
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self._save("last")
                    last_save = self.step
                if cfg.max_minutes is not None:
                    over = time.perf_counter() - t_start >= cfg.max_minutes * 60
                    if D.broadcast_flag(over, self.device):
                        stopped = "time_budget"
                if stopped != "max_steps":
                    break
        finally:
            bar.close()

        self._log_train(window)
        if self.has_eval and last_eval != self.step:
            val = self._eval_and_track()
        if last_save != self.step:
            self._save("last")
        if stopped != "max_steps":
            self._say(f"stopped at step {self.step}: "
                      + ("validation loss stopped improving (early_stop_patience)" if stopped == "early_stop"
                         else f"time budget of {cfg.max_minutes} minutes reached"))
        if self.main:
            plot_losses(self.metrics_path, self.plot_path, title=f"{self.out_dir.name}: loss")

        best_dir = self.ckpt_dir / "best"
        if self.step - start_step > 1:  # throughput of the steady state
            session_tokens, step_seconds = session_tokens - first[0], step_seconds - first[1]
        return {
            "steps": self.step,
            "train_loss": window.last_logged,
            "val_loss": val,
            "val_perplexity": _ppl(val),
            "best_val_loss": self.best_val,
            "best_val_perplexity": _ppl(self.best_val),
            "tokens_seen": self.tokens_seen,
            "tokens_per_sec": session_tokens / step_seconds if step_seconds > 0 else 0.0,  # train steps only
            "wall_seconds": time.perf_counter() - t_start,
            "precision": self.precision,
            "stopped": stopped,
            "resumed_from_step": start_step if resumed else None,
            "nonfinite_steps": self.nonfinite_steps,
            "world_size": self.dist.world_size,
            "out_dir": str(self.out_dir),
            "metrics": str(self.metrics_path),
            "plot": str(self.plot_path),
            "checkpoint": str(self.ckpt_dir / "last"),
            "best_checkpoint": str(best_dir) if self.best_val is not None else None,
        }

    def _train_step(self) -> tuple[float, dict[str, float], int, float]:
        """One optimizer step over grad_accum micro-batches -> (loss, extra metrics, tokens, grad norm).

        All ranks see the same (averaged) loss and gradient norm, so they agree on skipping a step.
        """
        cfg, model = self.cfg, self.train_model
        model.train()
        total = torch.zeros((), device=self.device)
        extras: dict[str, float] = {}
        ntok = 0
        for micro in range(cfg.grad_accum):
            batch = _to_device(self._next_batch(), self.device)
            ntok += _count_tokens(batch)
            last_micro = micro == cfg.grad_accum - 1
            # DDP all-reduces gradients in backward; only the last micro-step needs to.
            sync = model.no_sync() if self.dist.enabled and not last_micro else contextlib.nullcontext()
            with sync:
                with autocast(self.precision, self.device.type):
                    out = self.objective(model, batch)
                out = {"loss": out} if isinstance(out, torch.Tensor) else out
                (out["loss"] / cfg.grad_accum).backward()
            total += out["loss"].detach().float()
            for k, v in out.items():
                if k != "loss":
                    extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
        total /= cfg.grad_accum
        D.all_reduce_mean(total)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        loss = float(total)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped first step makes LambdaLR warn about the call order
            if not finite:
                warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        return loss, extras, ntok * self.dist.world_size, grad_norm

    def _next_batch(self) -> Any:
        try:
            return next(self._batches)
        except StopIteration:  # a finite iterable: start the next epoch
            self._batches = iter(self.train_batches)
        try:
            return next(self._batches)
        except StopIteration:
            raise FromzeroError(
                "the training data yielded no batches (empty dataset, or a one-shot generator that ran out); "
                "add more text, lower train.batch_size / the sequence length, or pass a re-iterable batch source"
            ) from None

    def _on_nonfinite(self, loss: float, grad_norm: float, consecutive: int, window: _Window) -> None:
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        self._say(f"warning: step {self.step}: {what} is not finite; skipped the update "
                  f"({consecutive} in a row, {self.nonfinite_steps} in total)")
        if self._log is not None:
            self._log.log("nonfinite", self.step, loss=loss, grad_norm=grad_norm, consecutive=consecutive)
        if consecutive < MAX_NONFINITE:
            return
        self._log_train(window)
        self._save("last")
        fixes = f"lower train.lr (now {self.cfg.lr:g})"
        if self.cfg.grad_clip == 0:
            fixes += ", enable train.grad_clip=1.0"
        if self.precision == "bf16":
            fixes += " or set train.precision=fp32"
        raise FromzeroError(
            f"training diverged: non-finite {what.split()[0]} for {consecutive} steps in a row (up to step "
            f"{self.step}); saved {self.ckpt_dir / 'last'}; {fixes} and run again"
        )

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss (the same value on every rank)."""
        model = self.fwd_model
        was_training = model.training
        model.eval()
        try:
            if self.eval_fn is not None:
                out = self.eval_fn(model)
                if isinstance(out, dict):
                    out = out.get("val_loss", out.get("loss"))
                t = torch.tensor([float(out)], device=self.device, dtype=torch.float64)
                return float(D.all_reduce_mean(t))
            shard = self.eval_list[self.dist.rank :: self.dist.world_size]
            sums = torch.zeros(2, device=self.device, dtype=torch.float64)  # (loss sum, batches)
            for batch in shard:
                with autocast(self.precision, self.device.type):
                    out = self.objective(model, _to_device(batch, self.device))
                loss = out if isinstance(out, torch.Tensor) else out["loss"]
                sums[0] += loss.detach().double()
                sums[1] += 1
            D.all_reduce_sum(sums)
            return float(sums[0] / sums[1].clamp(min=1))
        finally:
            model.train(was_training)

    def _eval_and_track(self) -> float:
        val = self.evaluate()
        improved = math.isfinite(val) and (self.best_val is None or val < self.best_val)
        if improved:
            self.best_val, self.evals_since_best = val, 0
        else:
            self.evals_since_best += 1
        if self._log is not None:
            self._log.log("eval", self.step, val_loss=val, val_ppl=_ppl(val), best_val_loss=self.best_val)
            plot_losses(self.metrics_path, self.plot_path, title=f"{self.out_dir.name}: loss")
        self._say(f"step {self.step}: val loss {val:.4f} (ppl {_ppl(val):.2f})" + (" *best*" if improved else ""))
        if improved:
            self._save("best")
        return val

    # ------------------------------------------------------------------ logging

    def _log_train(self, window: _Window) -> None:
        record = window.flush()
        if record is not None and self._log is not None:
            self._log.log("train", self.step, **record, tokens_seen=self.tokens_seen)

    def _say(self, line: str) -> None:
        if self.main:
            tqdm.write(line, file=sys.stderr)

    # ------------------------------------------------------------------ checkpoints

    def _trainer_state(self) -> dict[str, Any]:
        # Every rank contributes its own RNG and data position (a collective: all ranks call this).
        data = self.train_batches.state_dict() if hasattr(self.train_batches, "state_dict") else None
        ranks = D.gather_objects({"rng": rng_state(), "data": data})
        return {
            "format": 1,
            "step": self.step,
            "best_val_loss": self.best_val,
            "evals_since_best": self.evals_since_best,
            "tokens_seen": self.tokens_seen,
            "nonfinite_steps": self.nonfinite_steps,
            "precision": self.precision,
            "world_size": self.dist.world_size,
            "ranks": ranks,
            "train_config": to_dict(self.cfg),
        }

    def _save(self, name: str) -> None:
        state = self._trainer_state()
        if self.main:
            save_checkpoint(self.ckpt_dir / name, self.model, self.optimizer, self.scheduler, state, self.save_extra)
        D.barrier()

    def _restore(self) -> bool:
        """Load checkpoints/last into model, optimizer, scheduler, RNG and data position (every rank)."""
        path = find_checkpoint(self.ckpt_dir / "last")
        if path is None:
            self._say(f"resume: no checkpoint in {self.ckpt_dir / 'last'}; starting from step 0")
            return False
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        if "step" not in state:
            raise FromzeroError(f"{path} has no trainer_state.json, so it cannot be resumed; start without resume")
        self.step = int(state["step"])
        self.best_val = state.get("best_val_loss")
        self.evals_since_best = int(state.get("evals_since_best", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        ranks = state.get("ranks") or [{}]
        if len(ranks) != self.dist.world_size:
            self._say(f"resume: checkpoint was written by {len(ranks)} process(es), now {self.dist.world_size}; "
                      "the data order will differ from an uninterrupted run")
        mine = ranks[self.dist.rank % len(ranks)]
        if mine.get("data") is not None and hasattr(self.train_batches, "load_state_dict"):
            self.train_batches.load_state_dict(mine["data"])
        if mine.get("rng"):
            set_rng_state(mine["rng"])
        self._say(f"resumed from {path} at step {self.step}")
        return True

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class _Window:
    """Running sums between two log lines: the logged loss is the mean over the window's good steps."""

    def __init__(self) -> None:
        self.last_logged: float | None = None
        self._tok_rate = 0.0
        self._reset()

    def _reset(self) -> None:
        self.loss = self.steps = self.tokens = self.seconds = 0.0
        self.good = 0
        self.extras: dict[str, float] = {}
        self.lr = self.grad_norm = float("nan")

    def add(self, loss: float, extras: dict[str, float], tokens: int, seconds: float, lr: float,
            grad_norm: float) -> None:
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds
        self.lr = lr
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.good += 1
            self.loss += loss
            self.grad_norm = grad_norm
            for k, v in extras.items():
                self.extras[k] = self.extras.get(k, 0.0) + v
        if seconds > 0:  # smoothed, for the progress bar
            rate = tokens / seconds
            self._tok_rate = rate if self._tok_rate == 0 else 0.9 * self._tok_rate + 0.1 * rate

    def tokens_per_sec(self) -> float:
        return self._tok_rate

    def flush(self) -> dict[str, float] | None:
        if not self.steps:
            return None
        record: dict[str, Any] = {
            "loss": self.loss / self.good if self.good else None,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "tokens_per_sec": self.tokens / self.seconds if self.seconds > 0 else None,
            **{k: v / self.good for k, v in self.extras.items()},
        }
        if record["loss"] is not None:
            self.last_logged = record["loss"]
        self._reset()
        return record


def _resolve_device(name: str, ctx: D.DistributedContext) -> torch.device:
    if name == "auto":
        return ctx.device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FromzeroError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FromzeroError(f"train.device={name!r} but no CUDA GPU is visible; use train.device=cpu (or auto)")
    return device


def _ppl(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _count_tokens(batch: Any) -> int:
    if isinstance(batch, dict):
        t = batch.get("input_ids")
        if t is None:
            t = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        return int(t.numel()) if t is not None else 0
    if isinstance(batch, torch.Tensor):
        return int(batch.numel())
    return 0
