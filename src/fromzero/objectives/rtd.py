"""Replaced-token detection (ELECTRA): a small generator fills in masked tokens, a discriminator
spots which tokens were replaced.

    masked input --generator (MLM)--> sample a token at each masked position (no gradient)
    corrupted input (original tokens elsewhere) --discriminator--> per token: replaced or original?

The discriminator learns from every token, not just the 15% that are masked, which is why ELECTRA
reaches BERT's quality with much less compute. A sampled token equal to the original counts as
"original". The generator is a narrower encoder (1/4 of the width by default) trained with
MLM alongside; it shares the discriminator's embedding tables and reads them through a
projection. Loss = generator MLM loss + 50 * discriminator binary cross-entropy (the paper's weight).
After pretraining the discriminator is the model to keep.

Batches are MLM batches (`SentenceBatches` + `MLMMasker`): input_ids (masked), labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.errors import FromzeroError
from fromzero.model.encoder import EncoderConfig, EncoderModel


@dataclass
class RTDConfig:
    generator_scale: float = 0.25  # generator width (d_model, heads, d_ff) relative to the discriminator's
    disc_weight: float = 50.0  # weight of the discriminator loss
    temperature: float = 1.0  # sampling temperature of the generator

    def __post_init__(self) -> None:
        if not 0.0 < self.generator_scale <= 1.0:
            raise FromzeroError(f"rtd.generator_scale must be in (0, 1], got {self.generator_scale}")
        if self.disc_weight <= 0 or self.temperature <= 0:
            raise FromzeroError("rtd.disc_weight and rtd.temperature must be positive")


def generator_config(disc: EncoderConfig, scale: float) -> EncoderConfig:
    """The discriminator's config at `scale` width (same depth), reading embeddings of the discriminator's width."""
    head_dim = disc.d_model // disc.n_head
    n_head = max(1, round(disc.n_head * scale))
    return dataclasses.replace(disc, d_model=n_head * head_dim, n_head=n_head,
                               d_ff=max(1, round(disc.ffn_dim * scale)), embed_dim=disc.emb_dim,
                               pair_head=False, mlm_head=True)


@dataclass
class ElectraConfig:
    """What a checkpoint of an ElectraModel needs to be rebuilt (written to its config.json)."""

    discriminator: EncoderConfig
    rtd: RTDConfig


class ElectraModel(nn.Module):
    """Generator + discriminator + the per-token RTD head, as one module for the Trainer.

    forward(input_ids, attention_mask, token_type_ids, labels) -> dict with the combined "loss" and
    metrics: gen_loss, gen_acc (generator masked-token accuracy), rtd_loss, rtd_acc (discriminator
    accuracy over real tokens), replaced_frac (share of real tokens that were actually replaced).
    """

    def __init__(self, config: EncoderConfig, rtd: RTDConfig | None = None):
        super().__init__()
        self.rtd = rtd or RTDConfig()
        disc = dataclasses.replace(config, mlm_head=False, pair_head=False)
        self.config = ElectraConfig(disc, self.rtd)
        self.discriminator = EncoderModel(disc)
        self.generator = EncoderModel(generator_config(disc, self.rtd.generator_scale))
        for name in ("tok", "pos", "seg"):  # ELECTRA's embedding sharing
            setattr(self.generator.emb, name, getattr(self.discriminator.emb, name))
        self.generator.tie_weights()
        # Neither loss reads a pooler; under torchrun DDP fails a step on a trainable parameter that
        # gets no gradient, so they are frozen (and keep their initial weights, as in one process).
        for encoder in (self.generator, self.discriminator):
            encoder.pooler.requires_grad_(False)
        d = disc.d_model
        self.rtd_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        for m in self.rtd_head:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None, per_token: bool = False) -> dict[str, Tensor]:
        """per_token=True adds rtd_logits/replaced/real, flat [B*T] (for evaluation, not for the trainer's log)."""
        if labels is None:
            raise FromzeroError("ElectraModel needs MLM labels (which positions were masked); use MLMMasker batches")
        gen = self.generator(input_ids, attention_mask, token_type_ids, labels=labels)
        with torch.no_grad():
            sampled = sample_tokens(gen.logits.detach(), self.rtd.temperature)
        corrupted, replaced = corrupt(input_ids, labels, sampled)
        original = labels[labels != -100]
        h = self.discriminator(corrupted, attention_mask, token_type_ids, mlm=False).hidden
        logits = self.rtd_head(h).squeeze(-1).float().reshape(-1)
        replaced = replaced.reshape(-1)
        real = torch.ones_like(replaced) if attention_mask is None else attention_mask.reshape(-1).float()
        n_real = real.sum().clamp(min=1)
        rtd_loss = (F.binary_cross_entropy_with_logits(logits, replaced, reduction="none") * real).sum() / n_real
        correct = ((logits > 0).float() == replaced).float()
        extra = {"rtd_logits": logits.detach(), "replaced": replaced, "real": real} if per_token else {}
        return {
            **extra,
            "loss": gen.loss + self.rtd.disc_weight * rtd_loss,
            "gen_loss": gen.loss.detach(),
            "gen_acc": (gen.logits.detach().argmax(-1) == original).float().mean()
            if len(original) else gen.loss.new_zeros(()),
            "rtd_loss": rtd_loss.detach(),
            "rtd_acc": (correct * real).sum() / n_real,
            "replaced_frac": (replaced * real).sum() / n_real,
        }

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def corrupt(input_ids: Tensor, labels: Tensor, sampled: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's input and targets: original tokens everywhere except the labelled
    positions, which get the generator's samples (row-major order, as in the generator's logits).
    Returns (corrupted ids [B, T], replaced [B, T] float: 1 where the sample differs from the original)."""
    original = torch.where(labels != -100, labels, input_ids)
    picked = labels.reshape(-1) != -100
    corrupted = original.reshape(-1).clone()
    corrupted[picked] = sampled
    corrupted = corrupted.view_as(input_ids)
    return corrupted, (corrupted != original).float()


def sample_tokens(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """One token per row of logits [N, V] from softmax(logits / temperature) (Gumbel-max)."""
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    gumbel = -torch.empty_like(logits, dtype=torch.float32).exponential_().log()
    return (logits.float() / temperature + gumbel).argmax(-1)


def replaced_token_detection(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """objective(model, batch) for an ElectraModel (the model computes everything in forward)."""
    return model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), labels=batch["labels"])


@torch.no_grad()
def evaluate_rtd(model: ElectraModel, batches: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Discriminator accuracy and ROC AUC (replaced vs original, over real tokens), generator accuracy.

    Accuracy starts at the majority baseline (always "original"); AUC shows earlier whether the
    discriminator ranks replaced tokens above original ones (0.5 = chance). Sampling uses a fixed
    seed so the numbers are comparable across runs; the global RNG is restored.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    scores, targets = [], []
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), batch["labels"],
                        per_token=True)
            real = out["real"].bool()
            scores.append(out["rtd_logits"][real].cpu())
            targets.append(out["replaced"][real].cpu())
            for k in ("rtd_acc", "gen_acc", "replaced_frac", "rtd_loss", "gen_loss"):
                sums[k] = sums.get(k, 0.0) + float(out[k])
    finally:
        torch.random.set_rng_state(state)
        model.train(was)
    n = max(len(batches), 1)
    res = {k: v / n for k, v in sums.items()}
    res["rtd_accuracy"] = res.pop("rtd_acc", 0.0)
    res["generator_accuracy"] = res.pop("gen_acc", 0.0)
    res["rtd_majority_baseline"] = 1.0 - res.get("replaced_frac", 0.0)  # always answering "original"
    if scores:
        res["rtd_auc"] = roc_auc(torch.cat(scores), torch.cat(targets))
    return res


def roc_auc(scores: Tensor, targets: Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = int(targets.sum()), int((1 - targets).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse = torch.unique(scores, return_inverse=True)
    mean_rank = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse, minlength=len(uniq)).double()
    ranks = mean_rank[inverse]
    return float((ranks[targets.bool()].sum() - pos * (pos + 1) / 2) / (pos * neg))
