"""Text pairs for supervised contrastive learning: (anchor, positive) and an optional hard negative.

Supervised SimCSE needs pairs that mean the same or belong together; the other positives of the
batch are the anchor's negatives. Sources:

    chat_zh, chat_en   built-in dialogs (chatterbot-corpus): each turn and the reply that follows it
    .jsonl / .csv      the user's pairs: fields "text" and "positive", optionally "negative"

`PairBatches` works like `SentenceBatches`: the batch of step s is a pure function of (seed, s). One
global batch never holds the same anchor text or the same positive text twice: in-batch negatives
with the same text as the positive would be false negatives (chat_zh alone has 47 replies to "玩笑").
The validation split keeps whole dialogs out, because a middle turn is one pair's positive and the
next pair's anchor.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fromzero.data.loader import StepBatches
from fromzero.errors import FromzeroError

Pair = tuple[str, str, str | None]
FIELDS = ("text", "positive", "negative")


def iter_pairs(source: str | os.PathLike) -> Iterator[Pair]:
    """(anchor, positive, negative or None) from a built-in dialog corpus or a .jsonl/.csv file."""
    return (pair for group in iter_pair_groups(source) for pair in group)


def iter_pair_groups(source: str | os.PathLike) -> Iterator[list[Pair]]:
    """The pairs of each dialog (built-in corpora), or each row alone (files): what a split keeps together."""
    name = str(source)
    if name in ("chat_zh", "chat_en"):
        from fromzero.corpora import iter_conversations

        dialogs = ([(a, b, None) for a, b in zip(turns, turns[1:]) if a.strip() and b.strip()]
                   for turns in iter_conversations(name[-2:]))
        return (d for d in dialogs if d)
    path = Path(source)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise FromzeroError(f"pair source '{name}' is neither a built-in dialog corpus (chat_zh, chat_en) nor a "
                            ".jsonl/.csv file with \"text\" and \"positive\" fields")
    if not path.is_file():
        raise FromzeroError(f"pair file not found: {path} (check the path; it is relative to {Path.cwd()})")
    return ([pair] for pair in _iter_pair_file(path))


def _iter_pair_file(path: Path) -> Iterator[Pair]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix.lower() == ".csv":
            rows = enumerate(csv.DictReader(f), 2)
        else:
            rows = ((i, _json_line(path, i, line)) for i, line in enumerate(f, 1) if line.strip())
        for i, row in rows:
            missing = [k for k in FIELDS[:2] if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                raise FromzeroError(f"{path} line {i} has no text in {' and '.join(missing)}: every row needs "
                                    "\"text\" and \"positive\" (and may have \"negative\")")
            negative = row.get("negative") or None
            if negative is not None and not isinstance(negative, str):
                raise FromzeroError(f"{path} line {i}: \"negative\" must be a string, got {type(negative).__name__}")
            yield row["text"], row["positive"], negative


def _json_line(path: Path, i: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise FromzeroError(f"{path} line {i} is not valid JSON ({e.msg}): each line must be an object like "
                            "{\"text\": \"...\", \"positive\": \"...\"}") from None
    if not isinstance(obj, dict):
        raise FromzeroError(f"{path} line {i} is a {type(obj).__name__}, not an object with \"text\" and \"positive\"")
    return obj


@dataclass
class PairCorpus:
    """Tokenized pairs (token ids without [CLS]/[SEP]); `groups` numbers the dialog each pair comes from."""

    anchors: list[np.ndarray]
    positives: list[np.ndarray]
    negatives: list[np.ndarray] | None
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def n_docs(self) -> int:
        return len(self)

    @cached_property
    def text_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(anchor, positive) text ids: pairs with the same anchor (or positive) text share one."""
        return _text_ids(self.anchors), _text_ids(self.positives)

    @cached_property
    def max_batch(self) -> int:
        """The most pairs one batch can hold without repeating an anchor or a positive text."""
        return int(min(ids.max(initial=-1) for ids in self.text_ids)) + 1

    @cached_property
    def tokens(self) -> np.ndarray:
        """All token ids, flat (for counts)."""
        parts = [*self.anchors, *self.positives, *(self.negatives or [])]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def subset(self, idx: np.ndarray) -> PairCorpus:
        def pick(rows: list[np.ndarray]) -> list[np.ndarray]:
            return [rows[i] for i in idx]

        return PairCorpus(pick(self.anchors), pick(self.positives),
                          None if self.negatives is None else pick(self.negatives), self.groups[idx])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[PairCorpus, PairCorpus]:
        """(train, val): whole groups, in a seeded order, go to val until it holds val_fraction of the pairs."""
        groups = np.unique(self.groups)
        order = np.random.default_rng(seed).permutation(groups)
        sizes = np.bincount(np.searchsorted(groups, self.groups))[np.searchsorted(groups, order)]
        n_val = int(np.searchsorted(np.cumsum(sizes), len(self) * val_fraction)) + 1 if val_fraction > 0 else 0
        n_val = min(n_val, len(groups) - 1)
        val = np.isin(self.groups, order[:n_val])
        return self.subset(np.flatnonzero(~val)), self.subset(np.flatnonzero(val))


def build_pair_corpus(sources: list[str], tokenizer) -> PairCorpus:
    """Read and tokenize the pairs of every source (hard negatives: in every pair or in none)."""
    groups = [g for src in sources for g in iter_pair_groups(src)]
    pairs = [p for g in groups for p in g]
    if not pairs:
        raise FromzeroError(f"no text pairs in {', '.join(sources)}: add rows with \"text\" and \"positive\"")
    with_neg = sum(p[2] is not None for p in pairs)
    if 0 < with_neg < len(pairs):
        raise FromzeroError(f"{with_neg} of {len(pairs)} text pairs have a \"negative\": give every pair a hard "
                            "negative or none, so that every batch has the same columns")

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(texts)]

    return PairCorpus(encode([p[0] for p in pairs]), encode([p[1] for p in pairs]),
                      encode([p[2] for p in pairs]) if with_neg else None,
                      np.repeat(np.arange(len(groups)), [len(g) for g in groups]))


class PairBatches(StepBatches):
    """Endless batches of [CLS] text [SEP] rows: input_ids/attention_mask (anchors), input_ids_b/
    attention_mask_b (positives), and input_ids_neg/attention_mask_neg when the corpus has negatives."""

    def __init__(self, corpus: PairCorpus, tokenizer, batch_size: int, max_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 2:
            raise FromzeroError(f"contrastive batches need batch_size >= 2 (the other pairs are the negatives), "
                                f"got {batch_size}")
        need = batch_size * world_size
        if corpus.max_batch < need:
            raise FromzeroError(f"{len(corpus)} text pairs ({corpus.max_batch} distinct texts on one side) cannot "
                                f"fill a batch of {need} pairs with distinct texts ({batch_size} per process x "
                                f"{world_size}): lower train.batch_size or add pairs")
        self.corpus, self.batch_size, self.max_len = corpus, batch_size, max_len
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step = 0

    def _pad(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [np.concatenate([[self.cls_id], r[: self.max_len - 2], [self.sep_id]]) for r in rows]
        ids = np.full((len(rows), max(map(len, rows))), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def _draw(self, step: int) -> list[int]:
        """Pairs of the global batch: a seeded shuffle, skipping pairs whose anchor or positive text is
        already in the batch (so a batch can come out smaller when nearly all pairs share texts)."""
        need, drawn = self.batch_size * self.world_size, []
        seen_anchor, seen_positive = set(), set()
        anchor_text, positive_text = self.corpus.text_ids
        for i in np.random.default_rng([self.seed, step]).permutation(len(self.corpus)).tolist():
            a, p = int(anchor_text[i]), int(positive_text[i])
            if a not in seen_anchor and p not in seen_positive:
                seen_anchor.add(a)
                seen_positive.add(p)
                drawn.append(i)
                if len(drawn) == need:
                    return drawn
        return drawn  # the pairs repeat texts so much that this batch comes out smaller

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of global step `step` for this rank."""
        mine = self._draw(step)[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        if len(mine) < 2:
            raise FromzeroError(f"step {step}: too few text pairs with distinct texts for this process's batch; "
                                "lower train.batch_size or add pairs")
        c, out = self.corpus, {}
        parts = {"": c.anchors, "_b": c.positives, **({"_neg": c.negatives} if c.negatives is not None else {})}
        for suffix, rows in parts.items():
            out[f"input_ids{suffix}"], out[f"attention_mask{suffix}"] = self._pad([rows[i] for i in mine])
        return out

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch": self.batch_size * self.world_size,
                "max_len": self.max_len, "n_pairs": len(self.corpus)}


def _text_ids(rows: list[np.ndarray]) -> np.ndarray:
    """One id per distinct token sequence (0, 1, ... in order of first appearance)."""
    ids: dict[bytes, int] = {}
    return np.array([ids.setdefault(r.tobytes(), len(ids)) for r in rows], dtype=np.int64)
