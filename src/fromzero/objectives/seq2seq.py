"""The loss every encoder-decoder objective shares: cross-entropy of the decoder's predictions of
`labels` (teacher forcing), plus token accuracy as a readable metric.

Span corruption (span.py) and denoising (denoise.py) differ only in how a batch is built; both
batches hold input_ids, attention_mask, decoder_input_ids (labels shifted right) and labels
(-100 = ignored padding), see fromzero.data.seq2seq_batches.
"""

from __future__ import annotations

import torch
from torch import nn


def seq2seq_lm(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"loss": mean CE over target tokens, "token_accuracy": share of target tokens predicted exactly}."""
    labels = batch["labels"]
    logits, loss = model(batch["input_ids"], batch.get("attention_mask"), batch.get("decoder_input_ids"), labels)
    if loss is None:
        raise ValueError("seq2seq_lm: the model returned no loss; it must return (logits, loss) when given labels")
    with torch.no_grad():
        valid = labels != -100
        hits = (logits.argmax(dim=-1) == labels) & valid
        accuracy = hits.sum().float() / valid.sum().clamp(min=1)
    return {"loss": loss, "token_accuracy": accuracy}
