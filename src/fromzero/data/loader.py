"""Batches of token windows for causal language modelling, straight from a token memmap.

Training batches are random windows, but the batch of global step s is a pure function of
(seed, s): there is no hidden iterator state, so resuming is exact by restoring one integer, and
every rank of a distributed run computes the same global batch and keeps only its own rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from fromzero.errors import FromzeroError

Batch = dict[str, torch.Tensor]


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
    """Rows tokens[s : s+seq_len+1] -> inputs (first seq_len) and labels (the same, one to the right)."""
    idx = starts[:, None] + np.arange(seq_len + 1)
    rows = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return {"input_ids": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous()}


def _check_size(tokens: np.ndarray, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise FromzeroError(
            f"the {what} data has only {len(tokens)} tokens, but one sequence needs seq_len+1 = {seq_len + 1}: "
            "add more text or lower the sequence length (model.max_seq_len / seq_len)"
        )


class StepBatches:
    """What every batch source whose batch of step s is a pure function of (seed, s) shares:
    endless iteration from `self.step`, resuming by that one integer, and fixed validation batches.
    A subclass sets self.step = 0 and defines batch(step) and state_dict() (step + whatever
    defines the sequence: seed, global batch, data size, ...)."""

    step: int

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch

    def load_state_dict(self, state: dict) -> None:
        """Continue with the batch right after the last one drawn before the state was saved; warn
        when what defines the sequence differs from the checkpoint's."""
        mine = self.state_dict()
        changed = [k for k in mine if k != "step" and k in state and state[k] != mine[k]]
        if changed:
            warnings.warn(f"resuming data with different {', '.join(changed)} than the checkpoint: batches will not "
                          "continue the original sequence exactly", stacklevel=2)
        self.step = int(state["step"])

    def fixed(self, n: int) -> list[dict[str, torch.Tensor]]:
        """n fixed batches (steps 0..n-1), e.g. for validation: the same on every call."""
        return [self.batch(i) for i in range(n)]


class TokenBatches(StepBatches):
    """Endless random windows: dict(input_ids=[B,T], labels=[B,T]) as int64 tensors.

    batch_size is per rank; rank r takes rows [r*B, (r+1)*B) of the global batch of B*world_size
    windows, so ranks never share a row and the union over ranks does not depend on world_size.
    `step` counts batches drawn (not optimizer steps: with gradient accumulation it runs ahead).
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        if batch_size < 1 or seq_len < 1:
            raise FromzeroError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise FromzeroError(f"rank must be in [0, world_size={world_size}), got {rank}")
        _check_size(tokens, seq_len, "training")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.step = 0

    def batch(self, step: int) -> Batch:
        """The batch of global step `step` for this rank (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _windows(self.tokens, mine, self.seq_len)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "global_batch": self.batch_size * self.world_size,
            "seq_len": self.seq_len,
            "n_tokens": len(self.tokens),
        }


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None) -> list[Batch]:
    """Fixed evaluation batches: consecutive non-overlapping windows from the start of `tokens`,
    the same on every call, so validation losses are comparable across steps and runs."""
    _check_size(tokens, seq_len, "validation")
    n_windows = (len(tokens) - 1) // seq_len
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * batch_size)
    starts = np.arange(n_windows) * seq_len
    return [_windows(tokens, starts[i : i + batch_size], seq_len) for i in range(0, n_windows, batch_size)]
