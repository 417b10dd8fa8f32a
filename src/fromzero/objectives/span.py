"""T5 span corruption: drop ~15% of the tokens in short spans, let the decoder write them back.

    original  the quick brown fox jumps over the lazy dog
    inputs    the quick <extra_id_0> jumps over <extra_id_1> dog </s>
    targets   <extra_id_0> brown fox <extra_id_1> the lazy </s>

Every noise span becomes one sentinel in the inputs; the targets list each sentinel followed by
the tokens it hides (and a sentinel for a trailing kept span, as in T5). The spans are placed like
T5's `random_spans_noise_mask`: round(L * density) noise tokens in round(noise / mean_span_length)
spans, span lengths a random split of the noise tokens, gaps a random split of the rest, the
sequence starting with kept text. Inputs are thus ~L*(1 - 0.15 + 0.05) long, targets ~L*0.2.

Sentinels: `add_sentinels(tok)` adds <extra_id_0> .. <extra_id_{n-1}> to the tokenizer as special
tokens at the top of the vocabulary, <extra_id_i> = vocab_size - 1 - i (T5's layout), so they
survive tokenizer.json, show up in decode(skip_special_tokens=False) and are never produced by
encoding ordinary text (no ids of real tokens are taken away). The model's vocab_size is the
tokenizer's after the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import AddedToken
from tokenizers import Tokenizer as _HFTokenizer

from fromzero.errors import FromzeroError
from fromzero.objectives.seq2seq import seq2seq_lm
from fromzero.tokenizer import Tokenizer

SENTINEL = "<extra_id_{}>"

__all__ = ["SpanConfig", "add_sentinels", "first_sentinel", "random_spans_noise_mask", "span_corrupt",
           "span_lengths", "seq2seq_lm"]


@dataclass
class SpanConfig:
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    n_sentinels: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise FromzeroError(f"span.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_span_length < 1.0:
            raise FromzeroError(f"span.mean_span_length must be >= 1, got {self.mean_span_length}")
        if self.n_sentinels < 1:
            raise FromzeroError(f"span.n_sentinels must be >= 1, got {self.n_sentinels}")


def add_sentinels(tok: Tokenizer, n: int = 100) -> Tokenizer:
    """A copy of `tok` with n sentinel tokens on top (see the module docstring); `tok` itself is
    returned when it already has them."""
    if tok.token_to_id(SENTINEL.format(0)) is not None:
        first_sentinel(tok, n)  # checks the layout
        return tok
    backend = _HFTokenizer.from_str(tok.to_str())
    backend.add_special_tokens([AddedToken(SENTINEL.format(i), special=True, normalized=False)
                                for i in reversed(range(n))])
    out = Tokenizer(backend)
    first_sentinel(out, n)
    return out


def first_sentinel(tok: Tokenizer, n: int = 1) -> int:
    """Id of <extra_id_0>; sentinel i is this id minus i. Checks that n sentinels are laid out so."""
    top = tok.token_to_id(SENTINEL.format(0))
    if top is None:
        raise FromzeroError("the tokenizer has no <extra_id_0> sentinel token; add them with "
                            "fromzero.objectives.span.add_sentinels(tok) before span corruption")
    for i in range(n):
        if tok.token_to_id(SENTINEL.format(i)) != top - i:
            raise FromzeroError(f"sentinel {SENTINEL.format(i)} is missing or out of order (expected id {top - i}); "
                                "rebuild the tokenizer with add_sentinels")
    return top


def _segment(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random split of n_items into n_segments positive lengths."""
    cuts = np.sort(rng.choice(n_items - 1, n_segments - 1, replace=False)) + 1 if n_segments > 1 else np.zeros(0, int)
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of `length` (True = noise): kept and noise spans alternate, kept first."""
    n_noise = int(min(max(round(length * noise_density), 1), length - 1))
    n_spans = max(1, min(int(round(n_noise / mean_span_length)), n_noise, length - n_noise))
    noise = _segment(n_noise, n_spans, rng)
    kept = _segment(length - n_noise, n_spans, rng)
    lengths = np.stack([kept, noise], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], n_spans), lengths)


def _collapse_spans(tokens: np.ndarray, mask: np.ndarray, first: int) -> np.ndarray:
    """Each maximal run of mask==True becomes one sentinel (first, first-1, ... in order)."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    sentinels = first - (np.cumsum(starts) - 1)
    return np.where(starts, sentinels, tokens)[~mask | starts]


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, first_sentinel_id: int, eos_id: int,
                 noise_density: float = 0.15, mean_span_length: float = 3.0,
                 n_sentinels: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(encoder inputs, decoder targets) for one window of token ids, both ending in eos."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise FromzeroError(f"span corruption needs windows of at least 2 tokens, got {len(tokens)}")
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng)
    inputs = _collapse_spans(tokens, mask, first_sentinel_id)
    targets = _collapse_spans(tokens, ~mask, first_sentinel_id)
    n_used = max(len(inputs) - int((~mask).sum()), len(targets) - int(mask.sum()))
    if n_used > n_sentinels:
        raise FromzeroError(f"a window needs {n_used} sentinels but the tokenizer has {n_sentinels}; "
                            "use shorter windows (seq_len) or more sentinels (span.n_sentinels)")
    eos = np.array([eos_id], dtype=np.int64)
    return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def span_lengths(encoder_len: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(raw window length, decoder length) whose corrupted inputs fit exactly in encoder_len tokens
    (T5's random_spans_helper): inputs = kept tokens + one sentinel per span + eos."""
    def lengths(raw: int) -> tuple[int, int]:
        n_noise = int(min(max(round(raw * noise_density), 1), raw - 1))
        n_spans = max(1, min(int(round(n_noise / mean_span_length)), n_noise, raw - n_noise))
        return raw - n_noise + n_spans + 1, n_noise + n_spans + 1

    if encoder_len < 3:
        raise FromzeroError(f"span corruption needs an encoder length of at least 3, got {encoder_len}")
    raw = 2
    while lengths(raw + 1)[0] <= encoder_len:
        raw += 1
    return raw, lengths(raw)[1]
