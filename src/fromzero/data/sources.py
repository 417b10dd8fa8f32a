"""Pretraining text: a built-in corpus or a user file, as a stream of documents (plain `str`).

As pretraining text, people_daily, reviews_zh and tweets_en leave out the validation and test
texts of the built-in fine-tuning tasks made from them (`fromzero.tasks`, default split), so
"pretrain, then fine-tune" never scores a test sentence the model has already read. This module is
the one place where raw corpora and labelled tasks meet.

Empty and whitespace-only documents are skipped; a source with no text at all is an error.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from fromzero.corpora import CORPORA, FILE_TYPES, file_reader
from fromzero.errors import FromzeroError
from fromzero.tasks.datasets import evaluation_keys, normalize_key, people_daily_pretraining_words

BUILTIN: dict[str, str] = {name: corpus.description for name, corpus in CORPORA.items()}

# Bumped whenever what a built-in corpus yields changes, so that cached shards are rebuilt.
CORPUS_VERSION = 2  # 2: the built-in fine-tuning tasks' val/test texts are left out

__all__ = ["BUILTIN", "CORPUS_VERSION", "iter_texts", "people_daily_words", "source_files"]


def people_daily_words() -> Iterator[list[str]]:
    """People's Daily paragraphs as word lists, without the sentences that the built-in tagging and
    pinyin tasks evaluate on (`fromzero.tasks.datasets.evaluation_keys`)."""
    return people_daily_pretraining_words()


def _pretraining_documents(name: str) -> Iterator[str]:
    """A built-in corpus without the texts its tasks evaluate on (People's Daily: sentence by sentence)."""
    if name == "people_daily":
        return ("".join(words) for words in people_daily_words())
    held_out = evaluation_keys(name)
    return (t for t in CORPORA[name].documents() if normalize_key(t) not in held_out)


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
    if name in CORPORA:
        return CORPORA[name].files()
    _reader(source)  # validates the path and raises the clear error
    return [Path(source)]


def _reader(source: str | os.PathLike) -> Callable[[], Iterator[str]]:
    """Resolve a source to a function producing its raw documents; bad names fail here, early."""
    name = str(source)
    if name in CORPORA:
        CORPORA[name].files()  # the package is installed and has its data files
        return lambda: _pretraining_documents(name)
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
    read = file_reader(path)
    return lambda: read(path)
