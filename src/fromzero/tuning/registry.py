"""Task kinds by name: how each is built, and which backbone families can serve it.

    kind = make_kind("tagging", tok, backbone, max_len=128, labels=labels, settings=KindSettings(crf=True))

Adding a kind is one entry in KINDS plus its TaskKind class (tuning/kinds.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import nn

from fromzero.errors import FromzeroError
from fromzero.tuning.backbone import family
from fromzero.tuning.collate import framing_for
from fromzero.tuning.heads import is_encoder
from fromzero.tuning.kinds import Chat, Classification, Seq2Seq, Tagging, TaskKind
from fromzero.tuning.seq2seq import seq2seq_format
from fromzero.tuning.sft import ChatFormat, ChatTemplate


@dataclass
class KindSettings:
    """The fine-tuning settings a task kind reads (the rest of a FinetuneConfig is the recipe's)."""

    pooling: str = "auto"
    dropout: float = 0.1
    crf: bool = False
    pack: bool = True
    max_new_tokens: int | None = None
    chat_template: ChatTemplate = field(default_factory=ChatTemplate)
    eval_batch_size: int = 64
    virtual_tokens: int = 0  # context positions a soft prompt takes (peft.method: prompt)


@dataclass(frozen=True)
class KindSpec:
    build: Callable[..., TaskKind]  # (tok, backbone, max_len, labels, settings, unit) -> TaskKind
    families: tuple[str, ...]  # backbone families (tuning/backbone.py: family) that can serve the kind


def _classification(tok: Any, backbone: nn.Module, max_len: int, labels: Sequence[str], s: KindSettings,
                    unit: str) -> TaskKind:
    return Classification(tok, max_len, labels, framing_for(is_encoder(backbone), tok), s.pooling, s.dropout,
                          s.eval_batch_size)


def _tagging(tok: Any, backbone: nn.Module, max_len: int, labels: Sequence[str], s: KindSettings,
             unit: str) -> TaskKind:
    return Tagging(tok, max_len, labels, framing_for(is_encoder(backbone), tok), unit, s.dropout, s.eval_batch_size,
                   s.crf)


def _seq2seq(tok: Any, backbone: nn.Module, max_len: int, labels: Sequence[str], s: KindSettings,
             unit: str) -> TaskKind:
    return Seq2Seq(tok, max_len, seq2seq_format(backbone, tok, max_len, s.eval_batch_size), s.max_new_tokens,
                   s.eval_batch_size)


def _chat(tok: Any, backbone: nn.Module, max_len: int, labels: Sequence[str], s: KindSettings,
          unit: str) -> TaskKind:
    return Chat(tok, max_len, ChatFormat(tok, s.chat_template), s.pack, s.max_new_tokens, s.eval_batch_size)


# A task head needs per-token hidden states (decoders and encoders); generating text needs a decoder
# (chat, seq2seq as a prefix LM) or an encoder-decoder (seq2seq).
KINDS: dict[str, KindSpec] = {
    "classification": KindSpec(_classification, ("decoder", "encoder")),
    "tagging": KindSpec(_tagging, ("decoder", "encoder")),
    "seq2seq": KindSpec(_seq2seq, ("decoder", "encoder-decoder")),
    "chat": KindSpec(_chat, ("decoder",)),
}


def _spec(kind: str) -> KindSpec:
    if kind not in KINDS:
        raise FromzeroError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]


def check_fits(kind: str, backbone_family: str, where: str) -> None:
    """One clear line, before any data is prepared, when the backbone cannot serve the task kind."""
    families = _spec(kind).families
    if backbone_family not in families:
        fits = [k for k, spec in KINDS.items() if backbone_family in spec.families]
        raise FromzeroError(f"{where} is {_a(backbone_family)} model, which cannot be fine-tuned for {kind} "
                            f"(that needs {_a(' or '.join(families))} model); {_a(backbone_family)} fits "
                            f"{', '.join(fits) or 'no task kind'}")


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def make_kind(kind: str, tok: Any, backbone: nn.Module, max_len: int, labels: Sequence[str],
              settings: KindSettings | None = None, unit: str = "char") -> TaskKind:
    """The TaskKind for `kind`, sized to the backbone's context."""
    s = settings or KindSettings()
    spec = _spec(kind)
    check_fits(kind, family(backbone), type(backbone).__name__)
    ctx = getattr(getattr(backbone, "config", None), "max_seq_len", None)
    if ctx is not None:
        max_len = min(max_len, ctx)
    if s.virtual_tokens:
        max_len -= s.virtual_tokens  # soft prompts take context positions
        if max_len < 4:
            raise FromzeroError(f"peft.num_virtual_tokens={s.virtual_tokens} leaves no context for text "
                                f"(max_seq_len {ctx}); use fewer virtual tokens")
    if s.crf and kind != "tagging":
        raise FromzeroError(f"crf: true adds a CRF to a tagging head, but this is a {kind} task; remove crf")
    return spec.build(tok, backbone, max_len, labels, s, unit)


__all__ = ["KINDS", "KindSettings", "KindSpec", "check_fits", "make_kind"]
