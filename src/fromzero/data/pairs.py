"""Text pairs for supervised contrastive learning: (anchor, positive) and an optional hard negative.

Supervised SimCSE needs pairs that mean the same or belong together; the other positives of the
batch are the anchor's negatives. Sources:

    chat_zh, chat_en   built-in dialogs (chatterbot-corpus): each turn and the reply that follows it
    .jsonl / .csv      the user's pairs: fields "text" and "positive", optionally "negative"

`PairBatches` works like `SentenceBatches`: the batch of step s is a pure function of (seed, s), and
one global batch never holds the same pair twice (a duplicate would be its own false negative).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fromzero.errors import FromzeroError

Pair = tuple[str, str, str | None]
FIELDS = ("text", "positive", "negative")


def iter_pairs(source: str | os.PathLike) -> Iterator[Pair]:
    """(anchor, positive, negative or None) from a built-in dialog corpus or a .jsonl/.csv file."""
    name = str(source)
    if name in ("chat_zh", "chat_en"):
        from fromzero.data.sources import iter_conversations

        return ((a, b, None) for turns in iter_conversations(name[-2:]) for a, b in zip(turns, turns[1:])
                if a.strip() and b.strip())
    path = Path(source)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise FromzeroError(f"pair source '{name}' is neither a built-in dialog corpus (chat_zh, chat_en) nor a "
                            ".jsonl/.csv file with \"text\" and \"positive\" fields")
    if not path.is_file():
        raise FromzeroError(f"pair file not found: {path} (check the path; it is relative to {Path.cwd()})")
    return _iter_pair_file(path)


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
            yield row["text"], row["positive"], row.get("negative") or None


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
    """Tokenized pairs (token ids without [CLS]/[SEP]); `negatives` is None unless every pair has one."""

    anchors: list[np.ndarray]
    positives: list[np.ndarray]
    negatives: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def n_docs(self) -> int:
        return len(self)

    @property
    def tokens(self) -> np.ndarray:
        """All token ids, flat (for counts)."""
        parts = [*self.anchors, *self.positives, *(self.negatives or [])]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def subset(self, idx: np.ndarray) -> PairCorpus:
        pick = (lambda xs: [xs[i] for i in idx])
        return PairCorpus(pick(self.anchors), pick(self.positives),
                          None if self.negatives is None else pick(self.negatives))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[PairCorpus, PairCorpus]:
        """(train, val) by a seeded shuffle of the pairs; val gets at least one pair when asked for any."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = min(max(1, round(len(self) * val_fraction)), len(self) - 1) if val_fraction > 0 else 0
        return self.subset(np.sort(order[n_val:])), self.subset(np.sort(order[:n_val]))


def build_pair_corpus(sources: list[str], tokenizer) -> PairCorpus:
    """Read and tokenize the pairs of every source; negatives are kept only if every pair has one."""
    pairs = [p for src in sources for p in iter_pairs(src)]
    if not pairs:
        raise FromzeroError(f"no text pairs in {', '.join(sources)}: add rows with \"text\" and \"positive\"")

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(texts)]

    with_neg = all(p[2] is not None for p in pairs)
    return PairCorpus(encode([p[0] for p in pairs]), encode([p[1] for p in pairs]),
                      encode([p[2] for p in pairs]) if with_neg else None)


class PairBatches:
    """Endless batches of [CLS] text [SEP] rows: input_ids/attention_mask (anchors), input_ids_b/
    attention_mask_b (positives), and input_ids_neg/attention_mask_neg when the corpus has negatives."""

    def __init__(self, corpus: PairCorpus, tokenizer, batch_size: int, max_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 2:
            raise FromzeroError(f"contrastive batches need batch_size >= 2 (the other pairs are the negatives), "
                                f"got {batch_size}")
        if len(corpus) < batch_size * world_size:
            raise FromzeroError(f"{len(corpus)} text pairs cannot fill a batch of {batch_size * world_size} distinct "
                                "pairs: lower train.batch_size or add pairs")
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

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of global step `step` for this rank: distinct pairs drawn without replacement."""
        drawn = np.random.default_rng([self.seed, step]).choice(len(self.corpus), self.batch_size * self.world_size,
                                                                replace=False)
        mine = drawn[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        c, out = self.corpus, {}
        parts = {"": c.anchors, "_b": c.positives, **({"_neg": c.negatives} if c.negatives is not None else {})}
        for suffix, rows in parts.items():
            out[f"input_ids{suffix}"], out[f"attention_mask{suffix}"] = self._pad([rows[i] for i in mine])
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch": self.batch_size * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    def fixed(self, n: int) -> list[dict[str, torch.Tensor]]:
        """n fixed batches (steps 0..n-1), e.g. for validation."""
        return [self.batch(i) for i in range(n)]
