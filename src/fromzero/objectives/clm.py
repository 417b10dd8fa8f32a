"""Causal language modelling: predict each next token. The pretraining objective of GPT and Llama.

The batch already holds `labels` = `input_ids` shifted by one (built by the data loader), so the
objective is just the model's own cross-entropy; positions labelled -100 are ignored.
"""

from __future__ import annotations

import torch
from torch import nn


def causal_lm(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"loss": mean next-token cross-entropy} for a model called as model(input_ids, labels=...) -> (logits, loss)."""
    out = model(batch["input_ids"], labels=batch["labels"])
    loss = out[1] if isinstance(out, tuple) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError("causal_lm: the model returned no loss; it must return (logits, loss) when given labels")
    return {"loss": loss}
