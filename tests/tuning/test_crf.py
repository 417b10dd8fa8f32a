"""The CRF's BIO constraints hold at the first position too (a sequence never opens with I-X)."""

import torch

from fromzero.tuning.bio import viterbi
from fromzero.tuning.crf import CRF

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_crf_never_starts_with_an_inside_tag():
    crf = CRF(LABELS)
    emissions = torch.full((1, 3, len(LABELS)), -5.0)
    emissions[0, 0, LABELS.index("I-PER")] = 5.0  # the emissions want "I-PER" first
    emissions[0, 1:, LABELS.index("O")] = 5.0
    path = viterbi(emissions[0].numpy(), *crf.viterbi_scores())
    assert not LABELS[path[0]].startswith("I-"), [LABELS[i] for i in path]

    # and the likelihood gives a sequence opening with I-PER (almost) no probability mass: training
    # cannot learn to prefer it
    bad = torch.tensor([[LABELS.index("I-PER"), 0, 0]])
    good = torch.tensor([[LABELS.index("B-PER"), 0, 0]])
    assert crf.nll(emissions, bad) > crf.nll(emissions, good) + 1000
