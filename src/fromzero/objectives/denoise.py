"""BART-style denoising: corrupt a text window, let the encoder-decoder write the original back.

Four noising functions (Lewis et al. 2019, section 2.2), applied in this order when enabled:
- sentence permutation: the window is split after sentence-final tokens (。！？!?. ; and </s>) and
  the sentences are shuffled;
- token masking: each token becomes <mask> with probability `mask_ratio` (BERT-style);
- text infilling: `infill_ratio` of the tokens are hidden in spans whose lengths are drawn from
  Poisson(poisson_lambda); each span, even an empty one, becomes ONE <mask>, so the model must
  also work out how many tokens are missing (BART's best single noise, with permutation);
- token deletion: each token is dropped with probability `delete_ratio`; the model must find where.
The target is always the original window followed by </s>; the loss is seq2seq_lm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fromzero.errors import FromzeroError
from fromzero.objectives.seq2seq import seq2seq_lm

__all__ = ["DenoiseConfig", "denoise", "infill_spans", "sentence_end_ids", "sentence_permutation",
           "seq2seq_lm", "split_sentences", "text_infilling", "token_deletion", "token_masking"]

SENTENCE_END = ("。", "！", "？", "!", "?", ".", "；", ";", "\n")


@dataclass
class DenoiseConfig:
    infill_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    mask_ratio: float = 0.0
    delete_ratio: float = 0.0

    def __post_init__(self) -> None:
        for name in ("infill_ratio", "mask_ratio", "delete_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise FromzeroError(f"denoise.{name} must be in [0, 1), got {value}")
        if self.poisson_lambda <= 0:
            raise FromzeroError(f"denoise.poisson_lambda must be positive, got {self.poisson_lambda}")


def sentence_end_ids(tok) -> list[int]:
    """Ids of tokens that end a sentence (their text, stripped of spaces, ends in SENTENCE_END), plus </s>."""
    ids = {tok.eos_id}
    for i in range(tok.vocab_size):
        text = tok.id_to_token(i).replace("▁", " ").rstrip(" ")
        if text.endswith(SENTENCE_END):
            ids.add(i)
    return sorted(ids)


def split_sentences(tokens: np.ndarray, end_ids: np.ndarray | list[int]) -> list[np.ndarray]:
    """Pieces of `tokens` that end after a token in end_ids (the last piece may be unfinished)."""
    tokens = np.asarray(tokens)
    cuts = np.flatnonzero(np.isin(tokens, end_ids)) + 1
    return [s for s in np.split(tokens, cuts) if len(s)]


def sentence_permutation(tokens: np.ndarray, end_ids: np.ndarray | list[int], rng: np.random.Generator) -> np.ndarray:
    """The sentences of `tokens` (see split_sentences) in random order."""
    tokens = np.asarray(tokens)
    sentences = split_sentences(tokens, end_ids)
    if len(sentences) < 2:
        return tokens.copy()
    return np.concatenate([sentences[i] for i in rng.permutation(len(sentences))])


def token_masking(tokens: np.ndarray, ratio: float, mask_id: int, rng: np.random.Generator) -> np.ndarray:
    """Each token independently replaced by <mask> with probability `ratio`."""
    tokens = np.asarray(tokens)
    return np.where(rng.random(len(tokens)) < ratio, mask_id, tokens)


def token_deletion(tokens: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Each token independently dropped with probability `ratio`."""
    tokens = np.asarray(tokens)
    return tokens[rng.random(len(tokens)) >= ratio]


def infill_spans(length: int, ratio: float, rng: np.random.Generator,
                 poisson_lambda: float = 3.0) -> list[tuple[int, int]]:
    """Non-overlapping, non-adjacent (start, length) spans covering round(length * ratio) tokens.

    Lengths are Poisson(lambda) draws (zeros included: an empty span inserts a <mask>), the last
    one cut so the total is exact; the spans, in random order, are spread over the window with
    random gaps of at least one kept token between neighbours.
    """
    n_mask = int(round(length * ratio))
    if n_mask == 0 or length < 2:
        return []
    lengths: list[int] = []
    while sum(lengths) < n_mask:
        lengths.append(int(rng.poisson(poisson_lambda)))
    lengths[-1] -= sum(lengths) - n_mask
    free = length - n_mask
    while len(lengths) > 1 and free < len(lengths) - 1:  # too dense to separate: merge spans
        lengths[-2] += lengths.pop()
    k = len(lengths)
    # gaps g_0..g_k summing to `free`, inner gaps >= 1: stars and bars over the extra room
    extra = free - (k - 1)
    bars = np.sort(rng.integers(0, extra + 1, size=k))
    gaps = np.diff(np.concatenate([[0], bars, [extra]]))
    gaps[1:-1] += 1
    spans, pos = [], int(gaps[0])
    for n, gap in zip(lengths, gaps[1:]):
        spans.append((pos, n))
        pos += n + int(gap)
    return spans


def text_infilling(tokens: np.ndarray, spans: list[tuple[int, int]], mask_id: int) -> np.ndarray:
    """Replace each (start, length) span by a single <mask> (an empty span inserts one)."""
    tokens = np.asarray(tokens)
    pieces, prev = [], 0
    for start, n in spans:
        pieces += [tokens[prev:start], np.array([mask_id], dtype=tokens.dtype)]
        prev = start + n
    pieces.append(tokens[prev:])
    return np.concatenate(pieces)


def denoise(tokens: np.ndarray, rng: np.random.Generator, cfg: DenoiseConfig, mask_id: int, eos_id: int,
            end_ids: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(noised encoder inputs, original targets) for one window, both ending in eos."""
    original = np.asarray(tokens, dtype=np.int64)
    x = original
    if cfg.permute_sentences:
        x = sentence_permutation(x, end_ids, rng)
    if cfg.mask_ratio > 0:
        x = token_masking(x, cfg.mask_ratio, mask_id, rng)
    if cfg.infill_ratio > 0:
        x = text_infilling(x, infill_spans(len(x), cfg.infill_ratio, rng, cfg.poisson_lambda), mask_id)
    if cfg.delete_ratio > 0:
        x = token_deletion(x, cfg.delete_ratio, rng)
    eos = np.array([eos_id], dtype=np.int64)
    return np.concatenate([x, eos]), np.concatenate([original, eos])
