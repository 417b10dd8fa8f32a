"""Task heads: a classifier on top of any backbone that exposes its last hidden states.

The backbone protocol is one method,

    backbone.hidden_states(input_ids, attention_mask=None) -> [B, T, d]   (after the final norm)

which DecoderLM, the BERT-style EncoderModel and any small test model provide. A head is dropout +
one nn.Linear stored as `classifier`, so `peft.modules_to_save: [classifier]` names it and
`freeze: all_but_head` finds it without special cases. (Not `head`: BERT-style encoders already
have a `head`, their MLM head, and a suffix match would pick up both.)

Pooling (SequenceClassifier) turns [B, T, d] into one vector per text:
  cls  - position 0; through the encoder's own `pooled(...)` (BERT's [CLS] pooler) when it has one;
         under prompt tuning position 0 is the first soft-prompt vector, a learned [CLS] of its own
  last - the last real token (attention_mask == 1): in a decoder it is the only position that has
         read the whole text, so it is the natural summary (batches are right-padded)
  mean - the mean over real tokens
  auto - cls for encoders (backbones with `pooled`), last for decoders

Prompt tuning wraps the whole task model and feeds `inputs_embeds`; that works when the backbone's
`hidden_states` also accepts `inputs_embeds=` (otherwise a clear error says so).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fromzero.errors import FromzeroError

Pooling = Literal["auto", "cls", "last", "mean"]
POOLINGS = ("auto", "cls", "last", "mean")


def is_encoder(backbone: nn.Module) -> bool:
    """Bidirectional encoders expose `pooled` (or say `is_encoder = True`); decoders do not."""
    flag = getattr(backbone, "is_encoder", None)
    return bool(flag) if isinstance(flag, bool) else callable(getattr(backbone, "pooled", None))


def hidden_size(backbone: nn.Module) -> int:
    """Width of the backbone's hidden states, read from its config."""
    cfg = getattr(backbone, "config", None)
    for key in ("d_model", "hidden_size", "n_embd"):
        value = getattr(cfg, key, None) if cfg is not None else None
        if isinstance(value, int):
            return value
    raise FromzeroError(f"cannot tell the hidden size of {type(backbone).__name__}: give it a config with d_model "
                        "(or hidden_size)")


class _TaskHead(nn.Module):
    """Shared plumbing: the backbone call (token ids or embeddings) and config passthrough."""

    def __init__(self, backbone: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        if not callable(getattr(backbone, "hidden_states", None)):
            raise FromzeroError(f"{type(backbone).__name__} has no hidden_states(input_ids, attention_mask) method, "
                                "so a task head cannot sit on it; use a fromzero DecoderLM or EncoderModel")
        if num_labels < 2:
            raise FromzeroError(f"a classifier needs at least 2 labels, got {num_labels}; check the task's label set")
        self.backbone = backbone
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size(backbone), num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        params = inspect.signature(backbone.hidden_states).parameters
        self._takes_embeds = "inputs_embeds" in params
        self._takes_mask = "attention_mask" in params

    @property
    def config(self) -> Any:
        """The backbone's config (prompt tuning and checkpoints read `model.config`)."""
        return getattr(self.backbone, "config", None)

    def _hidden(self, input_ids: Tensor | None, attention_mask: Tensor | None,
                inputs_embeds: Tensor | None) -> Tensor:
        kw: dict[str, Any] = {"attention_mask": attention_mask} if self._takes_mask else {}
        if inputs_embeds is None:
            return self.backbone.hidden_states(input_ids, **kw)
        if not self._takes_embeds:
            raise FromzeroError(f"prompt tuning needs {type(self.backbone).__name__}.hidden_states to accept "
                                "inputs_embeds=; use peft.method lora, adapter, ia3 or bitfit for this model")
        return self.backbone.hidden_states(None, inputs_embeds=inputs_embeds, **kw)


class SequenceClassifier(_TaskHead):
    """One label per text: pooled hidden state -> dropout -> Linear `classifier` -> logits [B, num_labels]."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: Pooling = "auto", dropout: float = 0.1):
        super().__init__(backbone, num_labels, dropout)
        if pooling not in POOLINGS:
            raise FromzeroError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = ("cls" if is_encoder(backbone) else "last") if pooling == "auto" else pooling

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                inputs_embeds: Tensor | None = None, **_: Any) -> Tensor:
        if self.pooling == "cls" and inputs_embeds is None and callable(getattr(self.backbone, "pooled", None)):
            pooled = self.backbone.pooled(input_ids, attention_mask=attention_mask)
        else:
            pooled = pool(self._hidden(input_ids, attention_mask, inputs_embeds), attention_mask, self.pooling)
        return self.classifier(self.dropout(pooled))


class TokenClassifier(_TaskHead):
    """One label per token: hidden states -> dropout -> Linear `classifier` -> logits [B, T, num_labels]."""

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                inputs_embeds: Tensor | None = None, **_: Any) -> Tensor:
        return self.classifier(self.dropout(self._hidden(input_ids, attention_mask, inputs_embeds)))


def pool(hidden: Tensor, attention_mask: Tensor | None, how: str) -> Tensor:
    """[B, T, d] -> [B, d] by `how` in cls / last / mean (see the module docstring)."""
    if how == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden[:, -1] if how == "last" else hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype)
    if how == "last":
        T = hidden.shape[1]
        positions = torch.arange(T, device=hidden.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    raise FromzeroError(f"unknown pooling {how!r}; use cls, last or mean")
