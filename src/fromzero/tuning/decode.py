"""Greedy generation for task evaluation (seq2seq, chat): batched, stopping at EOS.

Prompts of equal length share a batch, so no row needs padding and the decoder needs no attention
mask; on a test set with many prompt lengths the batches are smaller, but every result is exactly
what the model would produce for that prompt alone.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Sequence

import torch
from torch import nn


@torch.no_grad()
def generate_until_eos(model: nn.Module, prompts: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int,
                       batch_size: int = 32, gen: object | None = None) -> list[list[int]]:
    """New token ids for every prompt (EOS and anything after it removed), in the prompts' order.

    `gen` is a fromzero.infer.generate.GenerationConfig (default: greedy, max_new_tokens).
    A prompt that fills the context keeps its last max_seq_len - 1 tokens (callers that know
    better, like the chat and seq2seq formats, shorten prompts themselves); generation stops at
    the context limit.
    """
    from fromzero.infer.generate import GenerationConfig, generate_ids

    gen = gen or GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    device = next(model.parameters()).device
    ctx = getattr(getattr(model, "config", None), "max_seq_len", None)
    if ctx is not None:
        prompts = [p[-(ctx - 1):] if len(p) >= ctx else p for p in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    out: list[list[int]] = [[] for _ in prompts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "stopped at the context limit": the caller reports truncation
        for T, idx in sorted(groups.items()):
            for k in range(0, len(idx), batch_size):
                chunk = idx[k:k + batch_size]
                ids = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
                full = generate_ids(model, ids, gen, eos_id=eos_id)
                for row, i in zip(full[:, T:].tolist(), chunk):
                    out[i] = row[: row.index(eos_id)] if eos_id in row else row
    return out
