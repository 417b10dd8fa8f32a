"""Encoder-decoder batches from a token memmap: random windows -> (inputs, targets) -> padded tensors.

An `example_fn(window, rng) -> (encoder ids, target ids)` (span corruption, denoising, ...) turns
each raw window into one example. As in loader.TokenBatches, the batch of step s is a pure function
of (seed, s): window starts come from rng(seed, s) and row r's noise from rng(seed, s, r) (r counts
rows of the global batch), so resuming restores one integer and ranks never share a row.

Each batch is padded to its longest row:
    input_ids [B, S] (pad), attention_mask [B, S] (1 = token), labels [B, T] (-100 = padding),
    decoder_input_ids [B, T] = labels shifted right behind decoder_start_id.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fromzero.data.loader import StepBatches
from fromzero.errors import FromzeroError

Batch = dict[str, torch.Tensor]
ExampleFn = Callable[[np.ndarray, np.random.Generator], "tuple[np.ndarray, np.ndarray]"]


def collate(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int = 0, decoder_start_id: int = 0) -> Batch:
    """Pad (inputs, targets) pairs into one batch (see the module docstring)."""
    B = len(examples)
    S = max(len(x) for x, _ in examples)
    T = max(len(y) for _, y in examples)
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, S), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        input_ids[i, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
        attention_mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.from_numpy(np.asarray(y, dtype=np.int64))
    decoder_input_ids = torch.full((B, T), decoder_start_id, dtype=torch.long)
    decoder_input_ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids, "labels": labels}


def _check_size(tokens: np.ndarray, window: int, what: str) -> None:
    if len(tokens) < window:
        raise FromzeroError(f"the {what} data has only {len(tokens)} tokens, but one window needs {window}: "
                            "add more text or lower seq_len")


class Seq2SeqBatches(StepBatches):
    """Endless random-window seq2seq batches; batch_size is per rank (rows r*B..(r+1)*B of each global batch)."""

    def __init__(self, tokens: np.ndarray, example_fn: ExampleFn, window: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pad_id: int = 0, decoder_start_id: int = 0):
        if batch_size < 1 or window < 2:
            raise FromzeroError(f"batch_size must be >= 1 and window >= 2, got {batch_size} and {window}")
        if not 0 <= rank < world_size:
            raise FromzeroError(f"rank must be in [0, world_size={world_size}), got {rank}")
        _check_size(tokens, window, "training")
        self.tokens, self.example_fn, self.window = tokens, example_fn, window
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.step = 0

    def batch(self, step: int) -> Batch:
        """The batch of global step `step` for this rank."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.window + 1, size=self.batch_size * self.world_size)
        rows = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        examples = [self.example_fn(np.asarray(self.tokens[starts[r]: starts[r] + self.window], dtype=np.int64),
                                    np.random.default_rng([self.seed, step, r])) for r in rows]
        return collate(examples, self.pad_id, self.decoder_start_id)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch": self.batch_size * self.world_size,
                "window": self.window, "n_tokens": len(self.tokens)}


def seq2seq_eval_batches(tokens: np.ndarray, example_fn: ExampleFn, window: int, batch_size: int,
                         max_batches: int | None = None, seed: int = 0, pad_id: int = 0,
                         decoder_start_id: int = 0) -> list[Batch]:
    """Fixed evaluation batches: consecutive windows from the start of `tokens`, each corrupted with
    its own fixed seed, identical on every call so validation numbers compare across steps and runs."""
    _check_size(tokens, window, "validation")
    n = len(tokens) // window
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    examples = [example_fn(np.asarray(tokens[i * window: (i + 1) * window], dtype=np.int64),
                           np.random.default_rng([seed, 1 << 40, i])) for i in range(n)]
    return [collate(examples[i: i + batch_size], pad_id, decoder_start_id) for i in range(0, n, batch_size)]
