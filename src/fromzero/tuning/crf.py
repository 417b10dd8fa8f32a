"""A linear-chain CRF on top of per-token tag scores.

A per-token softmax scores every position on its own. A CRF scores whole tag sequences,

    score(y) = start[y_0] + sum_i emit[i, y_i] + sum_i trans[y_(i-1), y_i] + end[y_last]

and trains on the negative log-likelihood of the gold sequence (the log-partition over all
sequences comes from the forward algorithm), so it learns which tags follow which: that an entity
of one type rarely abuts another, how long names run. For BIO tags the transitions BIO forbids
(I-X after O or after another type, I-X first) are fixed at a large negative score, so training and
decoding only consider well-formed sequences. Decoding is Viterbi with the learned scores.

Positions labelled -100 (special tokens, non-first word pieces) are skipped: the chain runs over
the labelled positions of each row in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fromzero.tuning.bio import bio_scores

FORBIDDEN = -1e4  # added to transitions BIO rules out (finite, so the forward algorithm stays NaN-free)


class CRF(nn.Module):
    def __init__(self, labels: Sequence[str]):
        super().__init__()
        n = len(labels)
        self.start = nn.Parameter(torch.zeros(n))
        self.trans = nn.Parameter(torch.zeros(n, n))  # [previous tag, next tag]
        self.end = nn.Parameter(torch.zeros(n))
        rules = bio_scores(labels)
        if rules is None:
            start_mask, trans_mask = torch.zeros(n), torch.zeros(n, n)
        else:
            start_mask, trans_mask = (torch.from_numpy(r).float().clamp(min=FORBIDDEN) for r in rules[:2])
        self.register_buffer("start_mask", start_mask, persistent=False)
        self.register_buffer("trans_mask", trans_mask, persistent=False)

    def scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """(start [L], trans [L, L], end [L]) with what BIO forbids (I-X first, I-X after O/another type) applied."""
        return self.start + self.start_mask, self.trans + self.trans_mask, self.end

    def nll(self, emissions: Tensor, labels: Tensor) -> Tensor:
        """Negative log-likelihood of the gold tags per labelled position (comparable in scale to
        token-level cross-entropy). emissions [B, T, L] (float32), labels [B, T] with -100 = skip."""
        em, tags, mask = _compact(emissions.float(), labels)
        n = mask.sum(1).long()
        start, trans, end = self.scores()
        rows = torch.arange(em.shape[0], device=em.device)
        gold = start[tags[:, 0]] + em.gather(2, tags.unsqueeze(-1)).squeeze(-1).mul(mask).sum(1)
        gold = gold + (trans[tags[:, :-1], tags[:, 1:]] * mask[:, 1:]).sum(1)
        gold = gold + end[tags[rows, (n - 1).clamp(min=0)]]
        alpha = start + em[:, 0]  # [B, L]: log-sum of the scores of all prefixes ending in each tag
        for i in range(1, em.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + em[:, i]
            alpha = torch.where(mask[:, i:i + 1] > 0, step, alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        has = n > 0
        return (log_z - gold)[has].sum() / n.sum().clamp(min=1)

    @torch.no_grad()
    def viterbi_scores(self) -> tuple[np.ndarray, ...]:
        """(start, trans, end) as numpy arrays for bio_decode.viterbi; take them once per evaluation."""
        return tuple(t.float().cpu().numpy() for t in self.scores())


def _compact(emissions: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Move each row's labelled positions to the front, in order: (emissions [B, N, L], tags [B, N]
    (0 where padded), mask [B, N] float), N = the most labelled positions in a row."""
    keep = labels != -100
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    n_max = max(int(keep.sum(1).max()), 1)
    order = order[:, :n_max]
    em = emissions.gather(1, order.unsqueeze(-1).expand(-1, -1, emissions.shape[-1]))
    tags = labels.gather(1, order).clamp(min=0)
    mask = keep.gather(1, order).float()
    return em, tags, mask
