"""Sequence-to-sequence examples: Chinese characters -> pinyin, built from People's Daily sentences.

Pinyin is a real transduction task with a checkable answer (polyphones such as 行 hang2/xing2 need
context), small enough for a tiny encoder-decoder. pypinyin converts each gold-segmented word, so
its phrase dictionary picks the right reading more often than on raw characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from fromzero.errors import FromzeroError

PINYIN_MAX_CHARS = 64  # longer sentences are left out: long targets make tiny seq2seq models slow


@dataclass
class Seq2SeqExample:
    source: str
    target: str

    def dedupe_key(self) -> str:
        return self.source


def pinyin_example(words: Sequence[str], tones: bool = True) -> Seq2SeqExample:
    """`["中国", "人民"]` -> source "中国人民", target "zhong1 guo2 ren2 min2" (or without tone digits).

    Neutral tone is written 5 so every syllable carries a digit; runs of non-Chinese characters
    (digits, Latin letters, punctuation) are copied through as one item.
    """
    syllables = [s for word in words for s in _word_pinyin(word, tones)]
    return Seq2SeqExample("".join(words), " ".join(s.strip() for s in syllables if s.strip()))


@lru_cache(maxsize=200_000)
def _word_pinyin(word: str, tones: bool) -> tuple[str, ...]:
    """pypinyin reads each list item on its own, so caching per word gives the same output ~4x faster."""
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError as e:
        raise FromzeroError("the pinyin task needs pypinyin; install it with `pip install pypinyin`") from e
    style = Style.TONE3 if tones else Style.NORMAL
    return tuple(lazy_pinyin([word], style=style, neutral_tone_with_five=True))
