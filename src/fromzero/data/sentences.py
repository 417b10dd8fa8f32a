"""Documents as sentences with word boundaries, and padded encoder batches built from them.

Encoder objectives need what a flat token stream forgets: where sentences and documents end (for
next-sentence / sentence-order pairs and sentence embeddings) and where words end (whole-word
masking: Chinese is tokenized character by character, so "masking a token" would usually hide
half a word that the other half gives away). People's Daily is hand-segmented, so its words are
real words; other sources use the tokenizer's own pre-tokenized words (one CJK character, or one
space-separated word such as "hel ##lo").

`SentenceBatches` works like `TokenBatches`: the batch of step s is a pure function of
(seed, s), so resuming restores one integer, and every rank builds only its own rows.
Rows are one of:
  packed    [CLS] consecutive sentences (crossing documents, [SEP] between them) [SEP], filled to max_len
  sentence  [CLS] one sentence [SEP]                                   (sentence embeddings)
  nsp/sop   [CLS] A [SEP] B [SEP] with pair_labels: nsp 0 = B follows A, 1 = B from another document;
            sop 0 = A then B in the original order, 1 = swapped
An optional per-row `transform(row, rng)` (e.g. MLM masking) runs before padding, with its own
seeded generator, so masks are reproducible too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fromzero.data.loader import StepBatches
from fromzero.data.sources import iter_texts, people_daily_words
from fromzero.errors import FromzeroError

Mode = Literal["packed", "sentence", "nsp", "sop"]
Row = dict[str, np.ndarray]
Segment = tuple[np.ndarray, np.ndarray]  # (token ids, word-start flags)
# a sentence ends after these (plus closing quotes/brackets); newlines end one too
_SENTENCE_END = re.compile(r"[。！？!?；;…\n]+[”’」』）)\"']*")


@dataclass
class SentenceCorpus:
    """Tokenized documents in flat arrays.

    tokens[sent_bounds[s]:sent_bounds[s+1]] is sentence s; sentences doc_bounds[d]:doc_bounds[d+1]
    belong to document d; word_start marks tokens that begin a word.
    """

    tokens: np.ndarray  # int32 [N]
    word_start: np.ndarray  # bool [N]
    sent_bounds: np.ndarray  # int64 [S + 1]
    doc_bounds: np.ndarray  # int64 [D + 1]

    @property
    def n_docs(self) -> int:
        return len(self.doc_bounds) - 1

    @property
    def n_sentences(self) -> int:
        return len(self.sent_bounds) - 1

    def sentence(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.sent_bounds[s], self.sent_bounds[s + 1]
        return self.tokens[a:b], self.word_start[a:b]

    def sentence_lengths(self) -> np.ndarray:
        return np.diff(self.sent_bounds)

    def doc_of_sentence(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_docs), np.diff(self.doc_bounds))

    def subset(self, docs: Sequence[int]) -> SentenceCorpus:
        """The corpus of the given documents (in the given order)."""
        sents = [np.arange(self.doc_bounds[d], self.doc_bounds[d + 1]) for d in docs]
        sent_idx = np.concatenate(sents) if sents else np.zeros(0, dtype=np.int64)
        lengths = np.diff(self.sent_bounds)[sent_idx]
        tok_idx = np.concatenate([np.arange(self.sent_bounds[s], self.sent_bounds[s + 1]) for s in sent_idx]) \
            if len(sent_idx) else np.zeros(0, dtype=np.int64)
        return SentenceCorpus(
            tokens=self.tokens[tok_idx], word_start=self.word_start[tok_idx],
            sent_bounds=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            doc_bounds=np.concatenate([[0], np.cumsum([len(x) for x in sents])]).astype(np.int64),
        )

    def split(self, val_fraction: float, seed: int = 0) -> tuple[SentenceCorpus, SentenceCorpus]:
        """(train, val) by whole documents: a seeded shuffle, never overlapping."""
        order = np.random.default_rng(seed).permutation(self.n_docs)
        n_val = max(1, int(round(self.n_docs * val_fraction))) if val_fraction > 0 else 0
        if self.n_docs - n_val < 1:
            raise FromzeroError(f"only {self.n_docs} documents: too few to hold out {val_fraction:.0%} for validation; "
                                "add text or lower data.val_fraction")
        return self.subset(np.sort(order[n_val:])), self.subset(np.sort(order[:n_val]))


def build_sentence_corpus(sources: Sequence[str], tokenizer, max_docs: int | None = None,
                          chunk: int = 2048) -> SentenceCorpus:
    """Tokenize the documents of `sources` (builtin names or files) into a SentenceCorpus.

    max_docs caps the documents read from each source (for quick experiments and tests).
    """
    tokens, starts, sent_lens, doc_sents = [], [], [], []

    def add(texts: list[str], char_words: list[np.ndarray | None]) -> None:
        for text, enc, cw in zip(texts, tokenizer.backend.encode_batch(texts, add_special_tokens=False), char_words):
            if not enc.ids:
                continue
            ids = np.asarray(enc.ids, dtype=np.int32)
            first_char = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
            if cw is not None:  # hand-segmented words
                words = cw[np.minimum(first_char, len(cw) - 1)]
            else:  # the tokenizer's pre-tokenized words
                words = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
            ws = np.ones(len(ids), dtype=bool)
            ws[1:] = words[1:] != words[:-1]
            ends = np.fromiter((m.end() for m in _SENTENCE_END.finditer(text)), dtype=np.int64)
            sent = np.searchsorted(ends, first_char, side="right")
            cuts = np.flatnonzero(np.diff(sent)) + 1
            lens = np.diff(np.concatenate([[0], cuts, [len(ids)]]))
            tokens.append(ids)
            starts.append(ws)
            sent_lens.append(lens)
            doc_sents.append(len(lens))

    for source in sources:
        texts: list[str] = []
        char_words: list[np.ndarray | None] = []
        docs = _people_daily_docs() if source == "people_daily" else ((t, None) for t in iter_texts(source))
        for n, (text, cw) in enumerate(docs):
            if max_docs is not None and n >= max_docs:
                break
            texts.append(text)
            char_words.append(cw)
            if len(texts) == chunk:
                add(texts, char_words)
                texts, char_words = [], []
        if texts:
            add(texts, char_words)
    if not tokens:
        raise FromzeroError(f"no text in {', '.join(sources)}: the sources gave no tokens; check data.sources")
    return SentenceCorpus(
        tokens=np.concatenate(tokens), word_start=np.concatenate(starts),
        sent_bounds=np.concatenate([[0], np.cumsum(np.concatenate(sent_lens))]).astype(np.int64),
        doc_bounds=np.concatenate([[0], np.cumsum(doc_sents)]).astype(np.int64),
    )


def _people_daily_docs() -> Iterator[tuple[str, np.ndarray]]:
    """(text, word index of every character) for each People's Daily paragraph."""
    for pieces in people_daily_words():
        lens = np.fromiter((len(w) for w in pieces), dtype=np.int64, count=len(pieces))
        yield "".join(pieces), np.repeat(np.arange(len(pieces)), lens)


class SentenceBatches(StepBatches):
    """Endless padded batches for encoder objectives; see the module docstring.

    Each batch: input_ids, attention_mask (1 = token, 0 = padding), token_type_ids, word_ids (word
    number within the row, -1 on [CLS]/[SEP]/padding), pair_labels for nsp/sop, and whatever
    `transform` adds (padded with -100 if its name is "labels", else 0). `tokenizer` only needs
    cls_id, sep_id and pad_id.
    """

    def __init__(self, corpus: SentenceCorpus, tokenizer, batch_size: int, max_len: int, mode: Mode = "packed",
                 transform: Callable[[Row, np.random.Generator], Row] | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1, min_tokens: int = 4):
        if mode not in ("packed", "sentence", "nsp", "sop"):
            raise FromzeroError(f"batch mode must be packed, sentence, nsp or sop, got {mode!r}")
        if batch_size < 1 or max_len < 8:
            raise FromzeroError(f"batch_size must be >= 1 and max_len >= 8, got {batch_size} and {max_len}")
        if not 0 <= rank < world_size:
            raise FromzeroError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.corpus, self.mode, self.transform = corpus, mode, transform
        self.batch_size, self.max_len = batch_size, max_len
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step = 0
        lengths = corpus.sentence_lengths()
        if mode == "packed":
            self.starts = np.flatnonzero(lengths > 0)
            self.doc_starts = set(corpus.doc_bounds[1:-1].tolist())
        elif mode == "sentence":
            self.starts = np.flatnonzero(lengths >= min_tokens)
        else:  # a pair needs a following sentence in the same document
            last = np.zeros(corpus.n_sentences, dtype=bool)
            last[corpus.doc_bounds[1:] - 1] = True
            self.starts = np.flatnonzero(~last & (lengths > 0))
            self.doc_of = corpus.doc_of_sentence()
        if len(self.starts) == 0 or (mode == "nsp" and corpus.n_docs < 2):
            need = {"packed": "any text", "sentence": f"sentences of at least {min_tokens} tokens",
                    "nsp": "documents with two or more sentences (and at least two documents)",
                    "sop": "documents with two or more sentences"}[mode]
            raise FromzeroError(f"the data has no rows for mode '{mode}': it needs {need}; add more text")

    # ------------------------------------------------------------------ rows

    def _packed(self, rng: np.random.Generator) -> Row:
        """Consecutive sentences from a random start, [SEP] between documents, up to max_len."""
        c, budget = self.corpus, self.max_len - 2
        s = int(self.starts[rng.integers(len(self.starts))])
        parts: list[Segment | None] = []
        while budget > 0 and s < c.n_sentences:
            if parts and s in self.doc_starts:  # the next document begins
                if budget < 2:
                    break
                parts.append(None)
                budget -= 1
            t, w = c.sentence(s)
            parts.append((t[:budget], w[:budget]))
            budget -= len(parts[-1][0])
            s += 1
        return self._join(parts)

    def _sentence(self, rng: np.random.Generator) -> Row:
        t, w = self.corpus.sentence(int(self.starts[rng.integers(len(self.starts))]))
        return self._join([(t[: self.max_len - 2], w[: self.max_len - 2])])

    def _pair(self, rng: np.random.Generator) -> Row:
        """A chunk of consecutive sentences split at a random sentence boundary into A and B; then
        B is replaced by text from another document (nsp) or swapped with A (sop) half of the time."""
        c, target = self.corpus, self.max_len - 3
        s = int(self.starts[rng.integers(len(self.starts))])
        doc = self.doc_of[s]
        doc_end = c.doc_bounds[doc + 1]
        chunk, total = [s], int(c.sent_bounds[s + 1] - c.sent_bounds[s])
        while chunk[-1] + 1 < doc_end and (total < target or len(chunk) < 2):
            chunk.append(chunk[-1] + 1)
            total += int(c.sent_bounds[chunk[-1] + 1] - c.sent_bounds[chunk[-1]])
        k = int(rng.integers(1, len(chunk)))
        a, b = self._span(chunk[0], chunk[k]), self._span(chunk[k], chunk[-1] + 1)
        label = int(rng.random() < 0.5)
        if label and self.mode == "nsp":  # B from a random other document
            while True:
                r = int(rng.integers(c.n_sentences))
                if self.doc_of[r] != doc:
                    break
            end = c.doc_bounds[self.doc_of[r] + 1]
            j = r + 1
            while j < end and c.sent_bounds[j] - c.sent_bounds[r] < target - len(a[0]):
                j += 1
            b = self._span(r, j)
        a, b = _truncate_pair(a, b, target)
        if label and self.mode == "sop":  # the same two segments, swapped
            a, b = b, a
        row = self._join([a, None, b], pair=True)
        row["pair_labels"] = np.array(label, dtype=np.int64)
        return row

    def _span(self, s0: int, s1: int) -> Segment:
        a, b = self.corpus.sent_bounds[s0], self.corpus.sent_bounds[s1]
        return self.corpus.tokens[a:b], self.corpus.word_start[a:b]

    def _join(self, parts: list[Segment | None], pair: bool = False) -> Row:
        """[CLS] parts [SEP] as a row; a None part is a [SEP]. With pair=True the tokens after the
        first [SEP] get token type 1. word_ids number the words of the row, -1 on special tokens."""
        ids, starts, special = [np.array([self.cls_id])], [np.array([False])], [np.array([True])]
        for part in [*parts, None]:
            t, w = (np.array([self.sep_id]), np.array([False])) if part is None else part
            ids.append(t)
            starts.append(w)
            special.append(np.full(len(t), part is None))
        ids_, starts_, special_ = np.concatenate(ids), np.concatenate(starts), np.concatenate(special)
        words = np.cumsum(starts_ & ~special_) - 1
        words[special_] = -1
        types = np.zeros(len(ids_), dtype=np.int64)
        if pair:
            types[int(np.flatnonzero(special_)[1]) + 1 :] = 1
        return {"input_ids": ids_.astype(np.int64), "token_type_ids": types, "word_ids": words.astype(np.int64)}

    # ------------------------------------------------------------------ batches

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of global step `step` for this rank (a pure function of seed and step)."""
        make = {"packed": self._packed, "sentence": self._sentence, "nsp": self._pair, "sop": self._pair}[self.mode]
        rows = []
        first = self.rank * self.batch_size
        for i in range(first, first + self.batch_size):
            row = make(np.random.default_rng([self.seed, step, i]))
            if self.transform is not None:
                row = self.transform(row, np.random.default_rng([self.seed, step, i, 1]))
            rows.append(row)
        return collate(rows, self.pad_id)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "global_batch": self.batch_size * self.world_size,
                "max_len": self.max_len, "mode": self.mode, "n_tokens": int(len(self.corpus.tokens))}


def _truncate_pair(a: Segment, b: Segment, target: int) -> tuple[Segment, Segment]:
    """Trim the longer segment until both fit in `target` tokens: A loses tokens at its start and B
    at its end, so the text around the A|B boundary - what NSP/SOP are about - stays intact."""
    la, lb = len(a[0]), len(b[0])
    excess = la + lb - target
    if excess > 0:
        cut = min(excess, abs(la - lb))  # first even out the lengths, then trim both alike
        la, lb = (la - cut, lb) if la > lb else (la, lb - cut)
        excess -= cut
        la, lb = la - (excess + 1) // 2, lb - excess // 2
    return (a[0][len(a[0]) - la :], a[1][len(a[0]) - la :]), (b[0][:lb], b[1][:lb])


def collate(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad rows to the longest one; scalar fields (pair_labels) are stacked."""
    T = max(len(r["input_ids"]) for r in rows)
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        if rows[0][key].ndim == 0:
            out[key] = torch.from_numpy(np.stack([r[key] for r in rows]))
            continue
        fill = pad_id if key == "input_ids" else -100 if key == "labels" else -1 if key == "word_ids" else 0
        arr = np.full((len(rows), T), fill, dtype=np.int64)
        for i, r in enumerate(rows):
            arr[i, : len(r[key])] = r[key]
        out[key] = torch.from_numpy(arr)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        mask[i, : len(r["input_ids"])] = 1
    out["attention_mask"] = torch.from_numpy(mask)
    return out
