"""Contrastive sentence embeddings (SimCSE), their quality metrics, and the embedding API.

Unsupervised SimCSE: every sentence goes through the encoder twice; dropout makes the two
embeddings differ slightly, and they form a positive pair. The other sentences of the batch are
the negatives. InfoNCE with temperature tau:

    loss = cross_entropy(cos(z_i, z'_j) / tau, target j = i)

Supervised SimCSE uses given pairs (input_ids_b: a paraphrase / entailment of input_ids) as the
positives instead, optionally with hard negatives (input_ids_neg) as extra columns.

Metrics (Wang & Isola, 2020), on L2-normalised embeddings:
  alignment  E ||f(x) - f(x+)||^2 over positive pairs          (lower = positives closer)
  uniformity log E exp(-2 ||f(x) - f(y)||^2) over all pairs    (lower = spread over the sphere)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.errors import FromzeroError

Pooling = Literal["cls", "mean", "pooler"]


@dataclass
class ContrastiveConfig:
    temperature: float = 0.05
    pooling: Pooling = "cls"  # cls = h[CLS]; mean = average over real tokens; pooler = tanh(W h[CLS])

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise FromzeroError(f"contrastive.temperature must be positive (SimCSE uses 0.05), got {self.temperature}")
        if self.pooling not in ("cls", "mean", "pooler"):
            raise FromzeroError(f"contrastive.pooling must be cls, mean or pooler, got {self.pooling!r}")


def pool_hidden(hidden: Tensor, attention_mask: Tensor | None, pooling: Pooling,
                pooled: Tensor | None = None) -> Tensor:
    """[B, T, d] -> [B, d] sentence vectors (not normalised)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        if pooled is None:
            raise FromzeroError("pooling='pooler' needs the model's pooled output (call the model with pool=True)")
        return pooled
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def encode(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, pooling: Pooling,
           token_type_ids: Tensor | None = None) -> Tensor:
    """Sentence vectors [B, d] of one padded batch (through model.forward, so DDP works)."""
    out = model(input_ids, attention_mask, token_type_ids, mlm=False, pool=pooling == "pooler")
    return pool_hidden(out.hidden, attention_mask, pooling, out.pooled)


def info_nce(a: Tensor, b: Tensor, temperature: float, negatives: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """InfoNCE of anchors a [B, d] against positives b [B, d] (row i of b is the positive of a_i,
    the other rows are negatives), plus optional extra negatives [M, d]. Returns (loss, top-1 accuracy)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    candidates = b if negatives is None else torch.cat([b, F.normalize(negatives.float(), dim=-1)])
    logits = a @ candidates.T / temperature
    target = torch.arange(len(a), device=a.device)
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """E ||x - y||^alpha over positive pairs of normalised embeddings."""
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=-1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """log E exp(-t ||x_i - x_j||^2) over distinct pairs of normalised embeddings."""
    x = F.normalize(x.float(), dim=-1)
    if len(x) < 2:
        return torch.zeros((), device=x.device)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


class SimCSE:
    """objective(model, batch) for an EncoderModel; unsupervised unless the batch has input_ids_b.

    Metrics: nce_acc (in-batch top-1 retrieval of the positive), align, uniform.
    """

    def __init__(self, temperature: float = 0.05, pooling: Pooling = "cls"):
        self.cfg = ContrastiveConfig(temperature, pooling)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        B = len(ids)
        if "input_ids_b" in batch:  # supervised: anchors, positives (and hard negatives) in one forward
            parts = [(ids, mask), (batch["input_ids_b"], batch["attention_mask_b"])]
            if "input_ids_neg" in batch:
                parts.append((batch["input_ids_neg"], batch["attention_mask_neg"]))
            all_ids, all_mask = _stack_padded(parts, pad_id=0)
        else:  # unsupervised: the same sentences twice; dropout makes the two views differ (in eval
            # mode they are identical and the loss is ~0: evaluate with contrastive_metrics instead)
            all_ids, all_mask = torch.cat([ids, ids]), torch.cat([mask, mask])
        z = encode(model, all_ids, all_mask, self.cfg.pooling)
        a, b, neg = z[:B], z[B : 2 * B], (z[2 * B :] if len(z) > 2 * B else None)
        loss, acc = info_nce(a, b, self.cfg.temperature, neg)
        with torch.no_grad():
            return {"loss": loss, "nce_acc": acc, "align": alignment(a, b), "uniform": uniformity(a)}


def _stack_padded(parts: list[tuple[Tensor, Tensor]], pad_id: int) -> tuple[Tensor, Tensor]:
    T = max(p[0].shape[1] for p in parts)
    ids = [F.pad(i, (0, T - i.shape[1]), value=pad_id) for i, _ in parts]
    masks = [F.pad(m, (0, T - m.shape[1]), value=0) for _, m in parts]
    return torch.cat(ids), torch.cat(masks)


def _specials(tokenizer) -> tuple[int, int, int]:
    """[CLS], [SEP], [PAD] ids of a fromzero tokenizer, or of a BERT tokenizer.json ([CLS] ...)."""
    ids = []
    for ours, bert in (("cls_id", "[CLS]"), ("sep_id", "[SEP]"), ("pad_id", "[PAD]")):
        i = getattr(tokenizer, ours, None)
        if i is None:
            i = tokenizer.token_to_id(bert)
        if i is None:
            raise FromzeroError(f"the tokenizer has no {bert} / <{ours[:3]}> token; use the tokenizer the encoder "
                                "was trained with")
        ids.append(int(i))
    return ids[0], ids[1], ids[2]


def encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, Tensor]:
    """[CLS] text [SEP] rows, truncated to max_len and padded: input_ids + attention_mask."""
    cls, sep, pad = _specials(tokenizer)
    rows = [[cls, *ids[: max_len - 2], sep] for ids in tokenizer.encode_batch(list(texts))]
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: Sequence[str] | str, pooling: Pooling = "cls",
          batch_size: int = 64, max_len: int | None = None, normalize: bool = True) -> Tensor:
    """L2-normalised sentence embeddings [N, d_model] (fp32, CPU) of `texts` with an EncoderModel.

    Texts are sorted by length into batches (less padding) and returned in the input order.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise FromzeroError("embed needs at least one text")
    if pooling not in ("cls", "mean", "pooler"):
        raise FromzeroError(f"pooling must be cls, mean or pooler, got {pooling!r}")
    max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = torch.empty(len(texts), model.config.d_model)
    try:
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            batch = encode_texts(tokenizer, [texts[i] for i in idx], max_len)
            z = encode(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), pooling).float()
            out[torch.from_numpy(idx)] = (F.normalize(z, dim=-1) if normalize else z).cpu()
    finally:
        model.train(was)
    return out


@torch.no_grad()
def contrastive_metrics(model: nn.Module, batches: Sequence[dict[str, Tensor]], pooling: Pooling = "cls",
                        drop_frac: float = 0.15, seed: int = 0) -> dict[str, float]:
    """Held-out embedding quality.

    Positive pairs are the batch's given pairs (input_ids_b, as PairBatches makes them) or, for
    plain sentences, each sentence and a copy with `drop_frac` of its tokens deleted (a
    perturbation never seen in training; eval mode, so no dropout). Reports alignment over those
    pairs, uniformity over the sentences, and retrieval accuracy: how often the positive's
    nearest neighbour among the batch's sentences is its own anchor, and val_loss: InfoNCE
    (temperature 0.05) of the positives against the anchors.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    align_sum = unif_sum = acc_sum = loss_sum = 0.0
    try:
        for batch in batches:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            if "input_ids_b" in batch:
                views = {"input_ids": batch["input_ids_b"], "attention_mask": batch["attention_mask_b"]}
            else:
                views = _drop_tokens(ids, mask, drop_frac, rng)
            a = encode(model, ids.to(device), mask.to(device), pooling)
            b = encode(model, views["input_ids"].to(device), views["attention_mask"].to(device), pooling)
            align_sum += float(alignment(a, b))
            unif_sum += float(uniformity(a))
            loss, acc = info_nce(b, a, 0.05)
            loss_sum += float(loss)
            acc_sum += float(acc)
    finally:
        model.train(was)
    n = max(len(batches), 1)
    return {"alignment": align_sum / n, "uniformity": unif_sum / n, "retrieval_accuracy": acc_sum / n,
            "val_loss": loss_sum / n}


def knn_accuracy(embeddings: Tensor, labels: Tensor, k: int = 10) -> float:
    """Leave-one-out k-nearest-neighbour accuracy under cosine similarity: how well the embeddings
    separate the classes without training anything on top of them."""
    z = F.normalize(embeddings.float(), dim=-1)
    sims = z @ z.T
    sims.fill_diagonal_(float("-inf"))
    votes = labels[sims.topk(min(k, len(z) - 1), dim=-1).indices]
    return float((torch.mode(votes, dim=-1).values == labels).float().mean())


def _drop_tokens(ids: Tensor, mask: Tensor, frac: float, rng: np.random.Generator) -> dict[str, Tensor]:
    """Delete ~frac of the inner tokens of each row (never the first/last real token: [CLS]/[SEP])."""
    rows = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = sum(m)
        inner = np.arange(1, n - 1)
        k = int(round(len(inner) * frac))
        gone = set(rng.choice(inner, size=k, replace=False).tolist()) if k and len(inner) > 1 else set()
        rows.append([t for j, t in enumerate(row[:n]) if j not in gone])
    T = max(len(r) for r in rows)
    pad = int(ids[mask == 0][0]) if bool((mask == 0).any()) else 0
    out_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    out_mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        out_ids[i, : len(r)] = torch.tensor(r)
        out_mask[i, : len(r)] = 1
    return {"input_ids": out_ids, "attention_mask": out_mask}


def embed_from_dir(model_dir: str, texts: Sequence[str], pooling: Pooling | None = None,
                   batch_size: int = 64) -> Tensor:
    """`fromzero embed`: embeddings [N, d] from an encoder folder (fromzero or Hugging Face BERT)
    with its tokenizer.json; pooling defaults to the one recorded at training (embedding.json), else cls."""
    import json
    from pathlib import Path

    from fromzero.model.auto import load_model
    from fromzero.model.encoder import EncoderModel
    from fromzero.tokenizer import Tokenizer

    path = Path(model_dir)
    model = load_model(path)
    if not isinstance(model, EncoderModel):
        raise FromzeroError(f"{path} holds a {type(model).__name__}, not a BERT-style encoder; "
                            "`fromzero embed` needs an encoder folder (e.g. runs/<encoder run>/encoder)")
    tokenizer = Tokenizer.load(path)
    if pooling is None:
        info = path / "embedding.json"
        pooling = json.loads(info.read_text(encoding="utf-8")).get("pooling", "cls") if info.is_file() else "cls"
    return embed(model, tokenizer, texts, pooling=pooling, batch_size=batch_size)
