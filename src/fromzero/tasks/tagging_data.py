"""Sequence-tagging examples from People's Daily (NER, POS, word segmentation) and subword alignment.

The corpus is word/POS tagged (`江/nr 泽民/nr 发表/v ...`, organisations `/nt`, places `/ns`, with
multi-word names sometimes bracketed: `[中央/n 人民/n 广播/vn 电台/n]nt`). Chinese models read
characters or subwords, not words, so NER and segmentation are labelled per character:

- NER: character BIO over PER (`nr`), LOC (`ns`), ORG (`nt`). A bracketed group tagged nr/ns/nt is
  one entity whatever its inner tags; adjacent `nr` words are one person (the corpus splits surname
  and given name: `江/nr 泽民/nr`).
- CWS: character BMES (Begin, Middle, End of a word; Single-character word).
- POS: one tag per word.

`align_labels` then maps word- or character-level tags onto any tokenizer's pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from fromzero.errors import FromzeroError

NER_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
CWS_LABELS = ["B", "M", "E", "S"]
IGNORE_INDEX = -100

# Paragraph lines are cut into sentences after these, keeping closing quotes/brackets that follow.
_SENTENCE_END = {"。", "！", "？", "!", "?"}
_CLOSERS = {"”", "’", "」", "』", "）", ")", "》", "】"}


@dataclass
class TaggingExample:
    tokens: list[str]  # characters for ner_zh/cws_zh, words for pos_zh
    tags: list[str]

    def dedupe_key(self) -> str:
        return "\x1f".join(self.tokens)


@dataclass
class TaggedSentence:
    """Words with POS tags, plus bracketed groups as (first_word, end_word_exclusive, group_tag)."""
    words: list[tuple[str, str]]
    groups: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(w for w, _ in self.words)

    def dedupe_key(self) -> str:
        return self.text


def tagged_sentence(words: Sequence[tuple]) -> TaggedSentence:
    """From `corpora.parse_tagged_line` output: (word, pos) or (word, pos, "B-nt"/"I-nt"/None)."""
    plain, groups, start, tag = [], [], None, None
    for i, item in enumerate(words):
        word, pos = item[0], item[1]
        mark = item[2] if len(item) > 2 else None
        if start is not None and (mark is None or mark.startswith("B-")):
            groups.append((start, i, tag))
            start = None
        if mark is not None and (mark.startswith("B-") or start is None):
            start, tag = i, mark[2:]
        plain.append((word, pos))
    if start is not None:
        groups.append((start, len(plain), tag))
    return TaggedSentence(plain, groups)


def split_sentences(sentence: TaggedSentence) -> list[TaggedSentence]:
    """Cut a paragraph after sentence-final punctuation (never inside a bracketed group)."""
    cuts, n = [], len(sentence.words)
    i = 0
    while i < n:
        if sentence.words[i][0] in _SENTENCE_END:
            j = i + 1
            while j < n and (sentence.words[j][0] in _CLOSERS or sentence.words[j][0] in _SENTENCE_END):
                j += 1
            if j < n and not any(a < j < b for a, b, _ in sentence.groups):
                cuts.append(j)
            i = j
        else:
            i += 1
    out, start = [], 0
    for end in cuts + [n]:
        if end > start:
            groups = [(a - start, b - start, t) for a, b, t in sentence.groups if start <= a and b <= end]
            out.append(TaggedSentence(sentence.words[start:end], groups))
        start = end
    return out


def entity_spans(sentence: TaggedSentence) -> list[tuple[int, int, str]]:
    """Entities as (first_word, end_word_exclusive, type) with the grouping rules in the module docstring."""
    group_at = {a: (b, t) for a, b, t in sentence.groups if t in NER_TYPES}
    spans: list[tuple[int, int, str]] = []
    i, n = 0, len(sentence.words)
    while i < n:
        if i in group_at:
            end, tag = group_at[i]
            spans.append((i, end, NER_TYPES[tag]))
            i = end
            continue
        pos = sentence.words[i][1]
        if pos in NER_TYPES:
            end = i + 1
            if pos == "nr":  # surname + given name are separate words in the corpus
                while end < n and sentence.words[end][1] == "nr" and end not in group_at:
                    end += 1
            spans.append((i, end, NER_TYPES[pos]))
            i = end
        else:
            i += 1
    return spans


def ner_example(sentence: TaggedSentence) -> TaggingExample:
    """Character-level BIO tags for PER/LOC/ORG."""
    starts = [0]
    for w, _ in sentence.words:
        starts.append(starts[-1] + len(w))
    chars = list(sentence.text)
    tags = ["O"] * len(chars)
    for a, b, kind in entity_spans(sentence):
        first, last = starts[a], starts[b]
        tags[first] = f"B-{kind}"
        for k in range(first + 1, last):
            tags[k] = f"I-{kind}"
    return TaggingExample(chars, tags)


def cws_example(sentence: TaggedSentence) -> TaggingExample:
    """Character-level BMES word-segmentation tags."""
    chars, tags = [], []
    for w, _ in sentence.words:
        chars.extend(w)
        tags.extend(["S"] if len(w) == 1 else ["B"] + ["M"] * (len(w) - 2) + ["E"])
    return TaggingExample(chars, tags)


def pos_example(sentence: TaggedSentence) -> TaggingExample:
    """Word-level part-of-speech tags (the corpus's own tag set: n, v, nr, ns, w, ...)."""
    return TaggingExample([w for w, _ in sentence.words], [p for _, p in sentence.words])


def align_labels(tags: Sequence[str | int], *, word_ids: Sequence[int | None] | None = None,
                 offsets: Sequence[tuple[int, int]] | None = None,
                 unit_spans: Sequence[tuple[int, int]] | None = None,
                 label_to_id: Mapping[str, int] | Sequence[str] | None = None,
                 ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Labels per tokenizer piece: the unit's label on its first piece, `ignore_index` elsewhere.

    `tags` has one entry per unit (word or character). Give either
    - `word_ids`: unit index per piece, None for specials (Hugging Face `BatchEncoding.word_ids()`), or
    - `offsets`: (start, end) character offsets per piece (`tokenizers.Encoding.offsets`); units are
      the characters of the text unless `unit_spans` gives each unit's (start, end). Pieces with an
      empty span (specials) are ignored.
    A piece that spans several units takes the first unit's label; later units' labels are lost, so
    character-level tags fit best with tokenizers that keep Chinese characters separate.
    String tags need `label_to_id` (a dict, or the label-name list where the index is the id).
    """
    if (word_ids is None) == (offsets is None):
        raise FromzeroError("align_labels needs exactly one of word_ids= or offsets=")
    if tags and isinstance(tags[0], str):
        if label_to_id is None:
            raise FromzeroError("string tags need label_to_id (e.g. label_names(task)) to become ids")
        mapping = label_to_id if isinstance(label_to_id, Mapping) else {n: i for i, n in enumerate(label_to_id)}
        try:
            ids = [int(mapping[t]) for t in tags]
        except KeyError as e:
            raise FromzeroError(f"tag {e.args[0]!r} is not in the label set {list(mapping)}; "
                                "pass the task's label_names") from None
    else:
        ids = [int(t) for t in tags]

    if word_ids is None:
        if unit_spans is None:
            unit_of_char = list(range(max((e for _, e in offsets), default=0)))
        else:
            unit_of_char = []
            for u, (s, e) in enumerate(unit_spans):
                unit_of_char.extend([None] * (s - len(unit_of_char)) + [u] * (e - s))
        word_ids = []
        for s, e in offsets:  # the first unit the piece touches (skips a leading space)
            word_ids.append(next((u for u in unit_of_char[s:e] if u is not None), None))

    labels, prev = [], None
    for w in word_ids:
        if w is None or w == prev:
            labels.append(ignore_index)
        else:
            if not 0 <= w < len(ids):
                raise FromzeroError(f"token points at unit {w} but there are only {len(ids)} tags; "
                                    "tokenize exactly the text the tags describe")
            labels.append(ids[w])
        if w is not None:
            prev = w
    return labels
