"""Tag decoding that only produces well-formed BIO sequences.

Taking the most likely tag at every position on its own can yield sequences no annotator writes:
"O I-PER", "B-LOC I-PER". Entity-level metrics then count a broken or mislabelled span, and every
such slip costs precision and recall at once. Decoding instead finds the single most likely
sequence (the sum of per-position log-probabilities) among the valid ones, where I-X may only follow
B-X or I-X: Viterbi with hard transition constraints, i.e. a CRF's decoding with 0 / -inf
transition scores, on top of the model's independent per-position distributions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def allowed_transitions(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(start_ok [L], step_ok [L, L]): which tags may open a sequence, and prev -> next pairs."""
    def inside(tag: str) -> str | None:
        return tag[2:] if tag.startswith("I-") else None

    def opens(tag: str) -> str | None:
        return tag[2:] if tag[:2] in ("B-", "I-") else None

    start_ok = np.array([inside(t) is None for t in labels])
    step_ok = np.array([[inside(nxt) is None or opens(prev) == inside(nxt) for nxt in labels] for prev in labels])
    return start_ok, step_ok


def bio_scores(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The BIO rules as viterbi()'s (start [L], trans [L, L], end [L]) scores - 0 where allowed, -inf
    where not - for a plain BIO tag set (O plus B-X / I-X only), else None: other schemes (BIOES,
    BMES, POS tags) have no such constraints here. viterbi(log_probs, *bio_scores(labels)) is the
    best valid sequence."""
    plain = "O" in labels and all(t == "O" or (t[:2] in ("B-", "I-") and len(t) > 2) for t in labels)
    if not plain:
        return None
    start_ok, step_ok = allowed_transitions(labels)
    return np.where(start_ok, 0.0, -np.inf), np.where(step_ok, 0.0, -np.inf), np.zeros(len(labels))


def viterbi(emissions: np.ndarray, start: np.ndarray, trans: np.ndarray, end: np.ndarray) -> list[int]:
    """argmax over tag sequences of start[y0] + sum emissions[i, yi] + sum trans[y(i-1), yi] + end[y_last]."""
    n = len(emissions)
    if n == 0:
        return []
    score = start + emissions[0]
    back = np.zeros((n, emissions.shape[1]), dtype=np.int64)
    for i in range(1, n):
        cand = score[:, None] + trans  # [prev, next]
        back[i] = cand.argmax(0)
        score = cand.max(0) + emissions[i]
    path = [int((score + end).argmax())]
    for i in range(n - 1, 0, -1):
        path.append(int(back[i, path[-1]]))
    return path[::-1]
