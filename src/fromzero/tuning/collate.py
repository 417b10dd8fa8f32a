"""Task examples -> token ids (once) -> padded batches, in a deterministic, resumable order.

Every task is tokenized once up front into rows of plain lists:
  classification  {"input_ids": [...], "labels": int}
  tagging         {"input_ids": [...], "labels": [...]}  (-100 on specials and non-first pieces)
  seq2seq / chat  {"input_ids": [...], "labels": [...]}  (next-token targets, -100 = no loss)
and batched with dynamic padding: to the longest row of the batch (rounded up to PAD_MULTIPLE),
never to a fixed length.

Too long for the context: a classification text is truncated (one warning per split says how many),
a tagged sentence is split into windows, so every unit is still trained on and predicted (seq2seq
and chat rules are in their modules). Text is encoded with special-token parsing off, so a review
that happens to contain "</s>" stays text.

`TaskBatches` yields batches forever, epoch after epoch; the order of epoch e depends only on
(seed, e), so `state_dict()` = (epoch, batch) resumes at exactly the next batch. With
`group_by_length` rows of similar length share a batch (shuffled within large chunks), which cuts
padding several-fold on reviews whose lengths range from 5 to 500 characters.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from fromzero.errors import FromzeroError
from fromzero.tasks.tagging_data import IGNORE_INDEX, align_labels

log = logging.getLogger("fromzero.tasks")
Row = dict[str, Any]
GROUP_CHUNK = 64  # batches per length-sorted chunk
# Training batches are padded to a multiple of this: CPU kernels (oneDNN under bf16 autocast) keep
# state per input shape, and one shape per possible length made a 600-step run's memory grow from
# 0.9 to 2.3 GB; multiples of 16 cost a few % of padding.
PAD_MULTIPLE = 16


# ----------------------------------------------------------------------------- tokenizing


def plain_text_backend(tok: Any) -> Any:
    """A copy of the tokenizer's backend that treats "<s>", "</s>" etc. inside text as plain text."""
    backend = type(tok.backend).from_str(tok.backend.to_str())
    backend.encode_special_tokens = True
    return backend


@dataclass
class Framing:
    """Special tokens around one text: encoders read `<cls> text <sep>` (BERT), decoders `text </s>`
    (the end-of-document token they saw in pretraining, so the last position has read everything)."""

    prefix: list[int] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)

    @property
    def extra(self) -> int:
        return len(self.prefix) + len(self.suffix)


def framing_for(encoder: bool, tok: Any) -> Framing:
    return Framing([tok.cls_id], [tok.sep_id]) if encoder else Framing([], [tok.eos_id])


class Truncations:
    """Counts truncated examples of one split and reports them in one line."""

    def __init__(self, where: str, max_len: int):
        self.where, self.max_len, self.count, self.total = where, max_len, 0, 0

    def add(self, truncated: bool) -> None:
        self.total += 1
        self.count += int(truncated)

    def report(self) -> None:
        if self.count:
            log.warning("%s: %d of %d examples are longer than %d tokens and were truncated (raise max_len, up to "
                        "the model's max_seq_len, to keep more)", self.where, self.count, self.total, self.max_len)


def _budget(max_len: int, framing: Framing) -> int:
    room = max_len - framing.extra
    if room < 1:
        raise FromzeroError(f"max_len={max_len} leaves no room for text next to {framing.extra} special tokens; "
                            "raise max_len")
    return room


def encode_classification(texts: Sequence[str], labels: Sequence[int] | None, tok: Any, framing: Framing,
                          max_len: int, num_labels: int, where: str = "data") -> list[Row]:
    """Rows for a sequence classifier; labels=None (prediction) gives label -100."""
    if labels is not None and len(labels) != len(texts):
        raise FromzeroError(f"{where}: {len(texts)} texts but {len(labels)} labels")
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise FromzeroError(f"{where}: text {i + 1} is empty; remove empty lines/rows")
    for i, y in enumerate(labels or []):
        if not (isinstance(y, int) and 0 <= y < num_labels):
            raise FromzeroError(f"{where}: example {i + 1} has label {y!r} but the labels are ids 0..{num_labels - 1}; "
                                "map label names to ids with the task's label_names")
    room, trunc = _budget(max_len, framing), Truncations(where, max_len)
    rows = []
    for i, enc in enumerate(plain_text_backend(tok).encode_batch(list(texts), add_special_tokens=False)):
        ids = enc.ids
        trunc.add(len(ids) > room)
        rows.append({"input_ids": framing.prefix + ids[:room] + framing.suffix,
                     "labels": IGNORE_INDEX if labels is None else int(labels[i])})
    trunc.report()
    return rows


def join_units(units: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Tagging units -> the text they spell and each unit's (start, end) in it.

    Units are concatenated as Chinese is written; a space goes between two units only where both
    sides are ASCII letters/digits ("Windows" "95"), so English word-level files read naturally.
    """
    text, spans = "", []
    for u in units:
        if text and u and text[-1].isascii() and text[-1].isalnum() and u[0].isascii() and u[0].isalnum():
            text += " "
        spans.append((len(text), len(text) + len(u)))
        text += u
    return text, spans


def unit_ids_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int | None]:
    """For each piece, the first unit it covers (None for pieces covering only spaces/specials)."""
    unit_of_char: list[int | None] = [None] * (max((e for _, e in spans), default=0))
    for u, (s, e) in enumerate(spans):
        for c in range(s, e):
            unit_of_char[c] = u
    return [next((u for u in unit_of_char[s:e] if u is not None), None) for s, e in offsets]


def encode_tagging(units: Sequence[Sequence[str]], tags: Sequence[Sequence[str]] | None, tok: Any,
                   framing: Framing, max_len: int, label_names: Sequence[str],
                   where: str = "data") -> tuple[list[Row], list[list[int | None]], list[int]]:
    """Rows for a token classifier, plus for every row the unit index at each position (None for
    specials and non-first pieces) and the example it belongs to.

    The label of a unit sits on its first piece (`align_labels`). A text longer than the context is
    split into consecutive windows, one row each, instead of being truncated: every unit is trained
    on and predicted.
    """
    index = {name: i for i, name in enumerate(label_names)}
    room = _budget(max_len, framing)
    backend = plain_text_backend(tok)
    joined = [join_units(u) for u in units]
    for i, (text, _) in enumerate(joined):
        if not text.strip():
            raise FromzeroError(f"{where}: example {i + 1} has no text; remove empty rows")
    rows: list[Row] = []
    positions: list[list[int | None]] = []
    owners: list[int] = []
    long = 0
    for i, enc in enumerate(backend.encode_batch([t for t, _ in joined], add_special_tokens=False)):
        word_ids = unit_ids_from_offsets(enc.offsets, joined[i][1])
        if tags is None:
            labels = [IGNORE_INDEX] * len(word_ids)
        else:
            if len(tags[i]) != len(units[i]):
                raise FromzeroError(f"{where}: example {i + 1} has {len(units[i])} tokens but {len(tags[i])} tags")
            unknown = sorted(set(tags[i]) - set(index))
            if unknown:
                raise FromzeroError(f"{where}: example {i + 1} has tag(s) {unknown[:5]} outside the label set "
                                    f"{list(label_names)[:20]}; fix the data or the label list")
            labels = align_labels(tags[i], word_ids=word_ids, label_to_id=index)
        firsts, seen = [], set()  # non-first pieces -> None, so each unit is read from one position
        for w in word_ids:
            firsts.append(w if w is not None and w not in seen else None)
            if w is not None:
                seen.add(w)
        long += len(enc.ids) > room
        for start in range(0, max(len(enc.ids), 1), room):
            stop = start + room
            rows.append({"input_ids": framing.prefix + enc.ids[start:stop] + framing.suffix,
                         "labels": [IGNORE_INDEX] * len(framing.prefix) + labels[start:stop]
                         + [IGNORE_INDEX] * len(framing.suffix)})
            positions.append([None] * len(framing.prefix) + firsts[start:stop] + [None] * len(framing.suffix))
            owners.append(i)
    if long:
        log.info("%s: %d of %d examples are longer than %d tokens and were split into windows", where, long,
                 len(units), max_len)
    return rows, positions, owners


def tags_from_predictions(pred_ids: Sequence[Sequence[int]], positions: Sequence[Sequence[int | None]],
                          owners: Sequence[int], lengths: Sequence[int], label_names: Sequence[str]) -> list[list[str]]:
    """Per-unit tags of every example from per-position predicted ids of its rows (windows).
    A unit no piece stands for (e.g. a character the tokenizer drops) gets "O" (or the first label
    of tag sets without "O"), which the metrics count as a miss."""
    fill = "O" if "O" in label_names else label_names[0]
    out = [[fill] * n for n in lengths]
    for pred, pos, i in zip(pred_ids, positions, owners):
        for p, u in zip(pred, pos):
            if u is not None:
                out[i][u] = label_names[int(p)]
    return out


# ----------------------------------------------------------------------------- batching


def collate(rows: Sequence[Row], pad_id: int, multiple: int = 1, cap: int | None = None) -> dict[str, torch.Tensor]:
    """Stack rows into tensors. List fields are right-padded to their own longest row, rounded up to
    `multiple` but never beyond `cap` (the longest row of the dataset, so never beyond the context);
    "labels" pad with -100, token fields with pad_id; `attention_mask` marks the real tokens of
    input_ids (1) vs padding (0); int fields (a class label) become a [B] tensor."""
    batch: dict[str, torch.Tensor] = {}
    for key, first in rows[0].items():
        if isinstance(first, list):
            longest = max(len(r[key]) for r in rows)
            T = -(-longest // multiple) * multiple
            if cap is not None:
                T = max(longest, min(T, cap))
            fill = IGNORE_INDEX if key == "labels" else pad_id
            t = torch.full((len(rows), T), fill, dtype=torch.long)
            for i, r in enumerate(rows):
                t[i, : len(r[key])] = torch.tensor(r[key], dtype=torch.long)
            batch[key] = t
            if key == "input_ids":
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for i, r in enumerate(rows):
                    mask[i, : len(r[key])] = 1
                batch["attention_mask"] = mask
        else:
            batch[key] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)
    return batch


class TaskBatches:
    """Shuffled epochs of padded batches, forever; exact resume through state_dict/load_state_dict."""

    def __init__(self, rows: Sequence[Row], batch_size: int, pad_id: int, seed: int = 0,
                 group_by_length: bool = True, pad_multiple: int = PAD_MULTIPLE):
        if not rows:
            raise FromzeroError("no training examples: the task's train split is empty; add data")
        self.rows, self.batch_size, self.pad_id, self.seed = rows, batch_size, pad_id, seed
        self.group_by_length, self.pad_multiple = group_by_length, pad_multiple
        self.cap = max(len(r["input_ids"]) for r in rows)
        self.epoch, self.batch = 0, 0  # the next batch to yield

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """The batches (lists of row indices) of `epoch`; a pure function of (seed, epoch)."""
        rng = random.Random(f"fromzero-batches-{self.seed}-{epoch}")
        order = list(range(len(self.rows)))
        rng.shuffle(order)
        B = self.batch_size
        if not self.group_by_length:
            return [order[i:i + B] for i in range(0, len(order), B)]
        batches = []
        for start in range(0, len(order), B * GROUP_CHUNK):
            chunk = sorted(order[start:start + B * GROUP_CHUNK], key=lambda i: len(self.rows[i]["input_ids"]))
            batches += [chunk[i:i + B] for i in range(0, len(chunk), B)]
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batches = self.epoch_order(self.epoch)
            while self.batch < len(batches):
                idx = batches[self.batch]
                self.batch += 1  # counted before yielding: a checkpoint after this step resumes after it
                yield collate([self.rows[i] for i in idx], self.pad_id, self.pad_multiple, self.cap)
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("rows", len(self.rows)) != len(self.rows):
            log.warning("resume: the training set had %s rows, now %d; the batch order differs from the "
                        "interrupted run", state.get("rows"), len(self.rows))
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def eval_batches(rows: Sequence[Row], batch_size: int, pad_id: int) -> list[tuple[list[int], dict]]:
    """Fixed batches for evaluation, length-sorted (little padding), each with its rows' indices."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    cap = len(rows[order[-1]]["input_ids"]) if rows else 0
    return [(order[i:i + batch_size], collate([rows[j] for j in order[i:i + batch_size]], pad_id, PAD_MULTIPLE, cap))
            for i in range(0, len(order), batch_size)]


@torch.no_grad()
def predict_logits(model: nn.Module, rows: Sequence[Row], batch_size: int, pad_id: int) -> list[torch.Tensor]:
    """Logits of a classifier for every row, in the rows' order (one tensor per row, padding removed)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Any] = [None] * len(rows)
    try:
        for idx, batch in eval_batches(rows, batch_size, pad_id):
            logits = model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            logits = logits.float().cpu()
            for k, i in enumerate(idx):
                out[i] = logits[k, : len(rows[i]["input_ids"])] if logits.dim() == 3 else logits[k]
    finally:
        model.train(was_training)
    return out


def lm_row(ids: Sequence[int], trained: Sequence[bool]) -> Row:
    """A causal-LM row whose loss covers only the tokens marked `trained`.

    labels[t] = ids[t + 1] when token t + 1 is trained, else -100; the last position is always -100,
    so rows can be concatenated (packed) without any position predicting across a boundary.
    """
    if len(ids) != len(trained):
        raise ValueError("ids and trained must have the same length")
    labels = [int(ids[t + 1]) if trained[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return {"input_ids": [int(i) for i in ids], "labels": labels + [IGNORE_INDEX]}


@torch.no_grad()
def mean_lm_loss(model: nn.Module, objective: Any, rows: Sequence[Row], batch_size: int, pad_id: int) -> float:
    """Loss per labelled token over `rows` (validation for the seq2seq and chat tasks)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    try:
        for _, batch in eval_batches(rows, batch_size, pad_id):
            batch = {k: v.to(device) for k, v in batch.items()}
            count = int((batch["labels"] != IGNORE_INDEX).sum())
            total += float(objective(model, batch)["loss"]) * count
            n += count
    finally:
        model.train(was_training)
    return total / max(n, 1)
