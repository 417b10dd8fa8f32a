"""Simple baselines that put a model's numbers in context.

A language model's validation perplexity only means something next to what a trivial model gets on
the same tokens: an add-alpha smoothed unigram model knows token frequencies and nothing else.
"""

from __future__ import annotations

import math

import numpy as np


def unigram_perplexity(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int,
                       alpha: float = 1.0) -> float:
    """Perplexity of an add-`alpha` smoothed unigram model fit on `train_tokens`, scored on `val_tokens`."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    probs = (counts + alpha) / (counts.sum() + alpha * vocab_size)
    nll = -np.log(probs[np.asarray(val_tokens, dtype=np.int64)]).mean()
    return float(math.exp(nll))
