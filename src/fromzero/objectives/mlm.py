"""Masked language modelling (BERT), with whole-word masking and optional NSP / SOP.

Batch building (`MLMMasker`, a row transform for `SentenceBatches`): of the tokens that may be
masked (never [CLS]/[SEP]/padding or other special ids) pick ~mask_prob, whole words at a time
when `whole_word` is on; every picked token gets label = its id, then becomes [MASK] (80%), a
random token (10%) or stays as it is (10%) - so the model cannot learn that only [MASK] needs
predicting. Other positions get label -100.

Whole-word masking matters for Chinese: the tokenizer cuts text into characters, so masking
"京" of "北京" alone is solved by looking at "北". With People's Daily's segmentation the whole
word is hidden and the model has to use the context.

Loss (`MaskedLM`): cross-entropy at the labelled positions, plus - for nsp/sop batches - a 2-way
cross-entropy of the pair head on [CLS]: next-sentence prediction (is B the real continuation of
A or a random segment?) or sentence-order prediction (ALBERT: are A and B swapped?).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fromzero.errors import FromzeroError


@dataclass
class MLMConfig:
    mask_prob: float = 0.15  # share of maskable tokens that are predicted
    mask_frac: float = 0.8  # of those: replaced by [MASK]
    random_frac: float = 0.1  # replaced by a random token; the rest keep their token
    whole_word: bool = True  # mask all tokens of a word together
    pair_weight: float = 1.0  # weight of the NSP/SOP loss

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise FromzeroError(f"mlm.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mask_frac < 0 or self.random_frac < 0 or self.mask_frac + self.random_frac > 1.0:
            raise FromzeroError(f"mlm.mask_frac ({self.mask_frac}) + mlm.random_frac ({self.random_frac}) must be "
                                "non-negative and at most 1")


class MLMMasker:
    """Row transform: picks positions to predict, corrupts them, adds `labels` (see module docstring)."""

    def __init__(self, mask_id: int, vocab_size: int, special_ids: Iterable[int], cfg: MLMConfig | None = None,
                 unk_id: int | None = None):
        self.cfg = cfg or MLMConfig()
        self.mask_id = mask_id
        self.special_ids = np.array(sorted({int(i) for i in special_ids if i is not None}), dtype=np.int64)
        # random replacements are real tokens: neither special nor <unk> (which may still be masked,
        # so that a word containing a rare character is masked whole)
        never = self.special_ids if unk_id is None else np.append(self.special_ids, unk_id)
        self.random_pool = np.setdiff1d(np.arange(vocab_size), never)

    @classmethod
    def for_tokenizer(cls, tokenizer, cfg: MLMConfig | None = None) -> MLMMasker:
        specials = [tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id, tokenizer.cls_id,
                    tokenizer.sep_id]
        return cls(tokenizer.mask_id, tokenizer.vocab_size, specials, cfg, unk_id=tokenizer.unk_id)

    def select(self, ids: np.ndarray, word_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask of the positions to predict: round(mask_prob * maskable) tokens (at least one)."""
        maskable = (word_ids >= 0) & ~np.isin(ids, self.special_ids)
        n = int(maskable.sum())
        chosen = np.zeros(len(ids), dtype=bool)
        if n == 0:
            return chosen
        target = max(1, int(round(n * self.cfg.mask_prob)))
        if not self.cfg.whole_word:
            chosen[rng.choice(np.flatnonzero(maskable), size=target, replace=False)] = True
            return chosen
        # Whole words in random order, each taken if it still fits (BERT's create_pretraining_data).
        words = word_ids[maskable]
        sizes = np.bincount(words)
        picked = np.zeros(len(sizes), dtype=bool)
        count = 0
        for w in rng.permutation(len(sizes)):
            if sizes[w] and count + sizes[w] <= target:
                picked[w] = True
                count += sizes[w]
                if count == target:
                    break
        chosen[maskable] = picked[words]
        return chosen

    def __call__(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = row["input_ids"]
        chosen = self.select(ids, row["word_ids"], rng)
        labels = np.where(chosen, ids, -100)
        pos = np.flatnonzero(chosen)
        u = rng.random(len(pos))
        new = ids.copy()
        new[pos[u < self.cfg.mask_frac]] = self.mask_id
        rand = pos[(u >= self.cfg.mask_frac) & (u < self.cfg.mask_frac + self.cfg.random_frac)]
        new[rand] = rng.choice(self.random_pool, size=len(rand))
        return {**row, "input_ids": new, "labels": labels}


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of logits [N, V] (rows = labelled positions, in order) against labels [B, T]."""
    target = labels.reshape(-1)
    target = target[target != -100]
    if target.numel() == 0:
        return torch.zeros((), device=labels.device)
    return (logits.argmax(-1) == target).float().mean()


class MaskedLM:
    """objective(model, batch) for an EncoderModel: MLM loss, plus the pair loss if the batch has pair_labels.

    Metrics: mlm_loss, mlm_acc (masked-token accuracy), and <task>_loss / <task>_acc for nsp/sop.
    """

    def __init__(self, pair_task: Literal["nsp", "sop"] | None = None, pair_weight: float = 1.0):
        self.pair_task, self.pair_weight = pair_task, pair_weight

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                    labels=batch["labels"])
        metrics = {"mlm_loss": out.loss.detach(), "mlm_acc": masked_accuracy(out.logits.detach(), batch["labels"])}
        loss = out.loss
        if "pair_labels" in batch:
            if out.pair_logits is None:
                raise FromzeroError("the batch has NSP/SOP pairs but the model has no pair head; "
                                    "build the encoder with model.pair_head=true")
            task = self.pair_task or "pair"
            pair_loss = F.cross_entropy(out.pair_logits.float(), batch["pair_labels"])
            loss = loss + self.pair_weight * pair_loss
            metrics[f"{task}_loss"] = pair_loss.detach()
            metrics[f"{task}_acc"] = (out.pair_logits.argmax(-1) == batch["pair_labels"]).float().mean()
        return {"loss": loss, **metrics}


@torch.no_grad()
def evaluate_mlm(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], pair_task: str | None = None,
                 unigram_token: int | None = None) -> dict[str, float]:
    """Masked-token accuracy (and pair accuracy) over fixed batches, pooled over all predictions.

    unigram_token: the training text's most frequent token; the accuracy of always predicting it
    is reported as the context-free baseline (an MLM that has not yet learned to use context
    plateaus there).
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    right = total = loss_sum = pair_right = pair_total = unigram_right = 0.0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                        labels=batch["labels"])
            n = int((batch["labels"] != -100).sum())
            right += float(masked_accuracy(out.logits, batch["labels"])) * n
            loss_sum += float(out.loss) * n
            total += n
            if unigram_token is not None:
                unigram_right += float((batch["labels"] == unigram_token).sum())
            if "pair_labels" in batch and out.pair_logits is not None:
                pair_right += float((out.pair_logits.argmax(-1) == batch["pair_labels"]).sum())
                pair_total += len(batch["pair_labels"])
    finally:
        model.train(was)
    result = {"masked_token_accuracy": right / max(total, 1), "mlm_loss": loss_sum / max(total, 1),
              "masked_tokens": int(total)}
    if unigram_token is not None:
        result["unigram_baseline_accuracy"] = unigram_right / max(total, 1)
    if pair_total:
        result[f"{pair_task or 'pair'}_accuracy"] = pair_right / pair_total
    return result
