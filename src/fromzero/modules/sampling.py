"""Picking the next token from logits: the one sampler every generation loop uses.

Greedy at temperature 0, else temperature / top-k / top-p (nucleus) sampling, with the CTRL
repetition penalty; the same rules and tie-breaking as transformers' logits processors, so a
seeded fromzero run and a transformers run filter the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> None:
    """In place, on [B, V] logits: tokens already in `seen` [B, T] have their logit divided by
    `penalty` when positive, multiplied when negative (so they always become less likely)."""
    scores = logits.gather(1, seen)
    logits.scatter_(1, seen, torch.where(scores > 0, scores / penalty, scores * penalty))


def sample_next(logits: Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """[B, V] float logits -> [B] next ids: argmax at temperature 0, else top-k/top-p filtered sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
