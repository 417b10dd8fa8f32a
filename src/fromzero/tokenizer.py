"""Train, save and load tokenizers (byte-level BPE, WordPiece, Unigram) that handle Chinese well.

A thin wrapper over Hugging Face `tokenizers`, so `tokenizer.json` is the one artifact: it loads
back here and in `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` with the same ids.

Why the pipelines look the way they do:
- Byte-level BPE never meets an unknown character, but left alone it merges bytes across
  character boundaries, so Chinese ends up in tokens that are fragments of characters. Each CJK
  character (and CJK punctuation / full-width form) is therefore split off before BPE runs: every
  merge stays inside one character, and common characters become whole single tokens.
  English goes through the usual GPT-2 regex, so " the" etc. stay whole words.
- WordPiece splits CJK characters the same way (as Chinese BERT does). Unigram does not: its
  pieces are always whole characters, so it can learn multi-character words such as "世纪".
- WordPiece and Unigram mark spaces with "▁" (no normalization, no lowercasing), so for text
  whose characters are in the vocabulary `decode(encode(text)) == text` holds for all three kinds.
"""

from __future__ import annotations

import codecs
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _HFTokenizer

from fromzero.errors import FromzeroError

SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<mask>", "<cls>", "<sep>")  # ids 0..6, in this order
BYTE_ALPHABET = 256
SPACE = "▁"

# One character of a script written without spaces, or CJK punctuation / full-width forms.
_CJK = Regex(
    "[" + r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}" + "\u3000-\u303f\uff00-\uffef" + "]"
)
_NON_SPACE_WHITESPACE = Regex(r"[^\S ]")  # newlines, tabs: kept as tokens of their own
# WordPiece/Unigram always know ASCII and basic whitespace, even if the training text lacks them
_BASIC_ALPHABET = [chr(c) for c in range(0x21, 0x7F)] + ["\n", "\t", "\r", SPACE]


@dataclass
class TokenizerConfig:
    """How to train a tokenizer.

    split_cjk: None = the kind's default (True for bpe/wordpiece, False for unigram).
    max_texts: train on a seeded random sample of this many texts (None = all) to bound time;
               byte-level BPE on all of People's Daily takes a few seconds, Unigram ~20-40 s.
    min_frequency is used by bpe and wordpiece (Unigram has no such setting).
    The trained vocabulary can come out smaller than vocab_size (nothing left to merge: BPE on
    Chinese-only text stops near 4.8k) or, for WordPiece with a large alphabet, a little larger:
    size models by `Tokenizer.vocab_size`, never by the config.
    """

    kind: Literal["bpe", "wordpiece", "unigram"] = "bpe"
    vocab_size: int = 8192
    min_frequency: int = 2
    split_cjk: bool | None = None
    max_texts: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("bpe", "wordpiece", "unigram"):
            raise FromzeroError(f"tokenizer kind must be bpe, wordpiece or unigram, got '{self.kind}'")
        need = min_vocab_size(self.kind)
        if self.vocab_size < need:
            why = f"{len(SPECIAL)} special tokens + {BYTE_ALPHABET} bytes" if self.kind == "bpe" else (
                f"{len(SPECIAL)} special tokens + at least one character"
            )
            raise FromzeroError(
                f"tokenizer vocab_size={self.vocab_size} is too small for kind={self.kind}: it needs at least "
                f"{need} ({why}); set vocab_size to a few thousand, e.g. 8192"
            )
        if self.min_frequency < 1:
            raise FromzeroError(f"tokenizer min_frequency must be >= 1, got {self.min_frequency}")
        if self.max_texts is not None and self.max_texts < 1:
            raise FromzeroError(f"tokenizer max_texts must be >= 1 (or null for all), got {self.max_texts}")


def min_vocab_size(kind: str) -> int:
    """Special tokens, plus the 256 byte tokens that byte-level BPE always holds."""
    return len(SPECIAL) + (BYTE_ALPHABET if kind == "bpe" else 1)


class Tokenizer:
    """Our tokenizer API over a `tokenizers.Tokenizer` (kept as `.backend`)."""

    def __init__(self, backend: _HFTokenizer):
        self.backend = backend
        spec = json.loads(backend.to_str())
        self.kind = str(spec["model"]["type"]).lower()
        self.byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self._added = set(backend.get_added_tokens_decoder())
        ids = [backend.token_to_id(t) for t in SPECIAL]
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id, self.cls_id, self.sep_id = ids

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind}, vocab_size={self.vocab_size})"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids; add_special_tokens=True prepends <s> (pairs are not used here)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Like encode, for many texts at once (parallel in Rust)."""
        encs = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encs]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        """The token as a person would read it: byte-level tokens are turned back into text, bytes
        that are only part of a UTF-8 character are shown as <0xE4>."""
        tok = self.backend.id_to_token(int(i))
        if tok is None:
            raise FromzeroError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        if not self.byte_level or int(i) in self._added:
            return tok
        return token_bytes(tok).decode("utf-8", errors="fromzero_hex")

    def to_str(self) -> str:
        """The tokenizer.json content (also used as a cache key by the data pipeline)."""
        return self.backend.to_str()

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json (into a directory, or to a path ending in .json).

        Into a directory we also write tokenizer_config.json naming the special tokens, so
        `transformers.AutoTokenizer.from_pretrained(dir)` knows which ids are pad/bos/eos/...
        """
        path = Path(path)
        if path.suffix == ".json":
            target, folder = path, None
        else:
            folder = path
            target = path / "tokenizer.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, self.backend.to_str(pretty=True))
        if folder is not None:
            hf = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "pad_token": SPECIAL[0], "unk_token": SPECIAL[1], "bos_token": SPECIAL[2],
                "eos_token": SPECIAL[3], "mask_token": SPECIAL[4], "cls_token": SPECIAL[5],
                "sep_token": SPECIAL[6], "clean_up_tokenization_spaces": False,
            }
            _atomic_write(folder / "tokenizer_config.json", json.dumps(hf, indent=2))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load from a directory holding tokenizer.json, or from the .json file itself."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FromzeroError(
                f"no tokenizer found at {file}: train one with `fromzero tokenizer train` or pass the "
                "directory that holds tokenizer.json"
            )
        try:
            return cls(_HFTokenizer.from_file(str(file)))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise FromzeroError(
                f"{file} is not a valid tokenizer.json ({str(e).splitlines()[0][:200]}): retrain or re-copy it"
            ) from None


def train_tokenizer(
    texts: Iterable[str], cfg: TokenizerConfig | None = None, show_progress: bool = True
) -> Tokenizer:
    """Train a tokenizer of `cfg.kind` on an iterable of documents."""
    cfg = cfg or TokenizerConfig()
    if cfg.max_texts is not None:
        texts = _sample(texts, cfg.max_texts, cfg.seed)
    split_cjk = cfg.split_cjk if cfg.split_cjk is not None else cfg.kind != "unigram"
    backend, trainer = _PIPELINES[cfg.kind](cfg, split_cjk, show_progress)

    seen = {"texts": 0, "chars": set()}

    def feed() -> Iterator[str]:
        for text in texts:
            if text and not text.isspace():
                seen["texts"] += 1
                seen["chars"].update(text)
                yield text

    try:
        backend.train_from_iterator(feed(), trainer)
    except FromzeroError:
        raise
    except Exception as e:
        if "not large enough" in str(e):  # Unigram must hold every character
            raise FromzeroError(
                f"tokenizer vocab_size={cfg.vocab_size} cannot hold the {len(seen['chars'])} distinct characters "
                f"of the training text: raise vocab_size above {len(seen['chars']) + len(SPECIAL)} or use "
                "kind=bpe (byte-level, never runs out of characters)"
            ) from None
        raise
    if seen["texts"] == 0:
        raise FromzeroError("no text to train the tokenizer on (all documents empty): check the data sources")
    for i, tok in enumerate(SPECIAL):
        assert backend.token_to_id(tok) == i, f"special token {tok} got id {backend.token_to_id(tok)}, not {i}"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL[2]} $A",
        pair=f"{SPECIAL[2]} $A {SPECIAL[6]} $B:1",
        special_tokens=[(SPECIAL[2], 2), (SPECIAL[6], 6)],
    )
    return Tokenizer(backend)


# ---------------------------------------------------------------------------------------------
# the three pipelines


def _bpe(cfg: TokenizerConfig, split_cjk: bool, show_progress: bool):
    backend = _HFTokenizer(models.BPE())
    steps = [pre_tokenizers.Split(_CJK, "isolated")] if split_cjk else []
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    return backend, trainer


def _spaced_pre_tokenizer(split_cjk: bool):
    """Words for WordPiece/Unigram: punctuation and newlines apart, spaces kept as '▁' on the word after."""
    steps = [pre_tokenizers.Split(_CJK, "isolated")] if split_cjk else []
    steps += [
        pre_tokenizers.Split(_NON_SPACE_WHITESPACE, "isolated"),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never"),
    ]
    return pre_tokenizers.Sequence(steps)


def _wordpiece(cfg: TokenizerConfig, split_cjk: bool, show_progress: bool):
    backend = _HFTokenizer(models.WordPiece(unk_token=SPECIAL[1], continuing_subword_prefix="##"))
    backend.pre_tokenizer = _spaced_pre_tokenizer(split_cjk)
    # "##" only marks "no space before"; spaces are carried by "▁", so pieces are simply concatenated
    backend.decoder = decoders.Sequence(
        [decoders.Replace(Regex("^##"), ""), decoders.Metaspace(replacement=SPACE, prepend_scheme="never")]
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL),
        limit_alphabet=cfg.vocab_size - len(SPECIAL),  # rare characters beyond the budget become <unk>
        initial_alphabet=_BASIC_ALPHABET,
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    return backend, trainer


def _unigram(cfg: TokenizerConfig, split_cjk: bool, show_progress: bool):
    backend = _HFTokenizer(models.Unigram())
    backend.pre_tokenizer = _spaced_pre_tokenizer(split_cjk)
    backend.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never")
    trainer = trainers.UnigramTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=list(SPECIAL),
        unk_token=SPECIAL[1],
        initial_alphabet=_BASIC_ALPHABET,
        # faster than the SentencePiece defaults (16, 0.75, 2): ~3x less time for the same
        # compression on People's Daily; pieces longer than 10 characters are rare at these sizes
        max_piece_length=10,
        shrinking_factor=0.5,
        n_sub_iterations=1,
        show_progress=show_progress,
    )
    return backend, trainer


_PIPELINES = {"bpe": _bpe, "wordpiece": _wordpiece, "unigram": _unigram}


# ---------------------------------------------------------------------------------------------
# reading the vocabulary


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the other bytes are
    shifted to code points 256+ so that every byte is a visible character in tokenizer.json."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_CHAR_TO_BYTE = {c: b for b, c in _byte_to_char().items()}


def _hex_errors(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("fromzero_hex", _hex_errors)


def token_bytes(token: str) -> bytes:
    """The raw bytes behind a byte-level BPE token string such as 'ä¸Ń' (= '中')."""
    return bytes(_CHAR_TO_BYTE[c] for c in token) if all(c in _CHAR_TO_BYTE for c in token) else token.encode()


def describe_vocab(tok: Tokenizer, n: int = 50, start: int | None = None) -> list[str]:
    """Readable lines "id  'token'" for `fromzero tokenizer show`.

    start=None shows n ids spread evenly over the whole vocabulary (a feel for what was learned);
    start=k shows ids k .. k+n-1. The first line is a summary.
    """
    size = tok.vocab_size
    if start is None:
        ids = sorted({round(k * (size - 1) / max(n - 1, 1)) for k in range(min(n, size))})
    else:
        ids = list(range(max(start, 0), min(start + n, size)))
    lines = [f"{tok.kind} tokenizer, {size} tokens, special: {' '.join(SPECIAL)} (ids 0-{len(SPECIAL) - 1})"]
    for i in ids:
        mark = "  (special)" if i in tok._added else ""
        lines.append(f"{i:>7}  {tok.id_to_token(i)!r}{mark}")
    return lines


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FFFF


def cjk_coverage(tok: Tokenizer, texts: Iterable[str]) -> float:
    """Share of CJK characters in `texts` that land in tokens made of whole characters (not byte
    fragments, not <unk>). A healthy Chinese tokenizer scores close to 1.0."""
    total = whole = 0
    for text in texts:
        total += sum(map(_is_cjk, text))
        for i in tok.encode(text):
            if i == tok.unk_id or i in tok._added:
                continue
            piece = tok.backend.id_to_token(i)
            if tok.byte_level:
                try:
                    piece = token_bytes(piece).decode("utf-8")
                except UnicodeDecodeError:
                    continue  # a fragment of a character
            whole += sum(map(_is_cjk, piece))
    return whole / total if total else 1.0


# ---------------------------------------------------------------------------------------------
# helpers


def _sample(texts: Iterable[str], k: int, seed: int) -> list[str]:
    """A seeded uniform sample of k texts (reservoir sampling), in their original order."""
    rng = random.Random(seed)
    keep: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        if i < k:
            keep.append((i, text))
        else:
            j = rng.randrange(i + 1)
            if j < k:
                keep[j] = (i, text)
    return [text for _, text in sorted(keep)]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
