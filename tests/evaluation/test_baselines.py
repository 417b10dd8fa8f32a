import math

import numpy as np
import pytest

from fromzero.evaluation.baselines import unigram_perplexity


def test_unigram_perplexity_matches_hand_computation():
    train = np.array([0, 0, 1, 2])
    val = np.array([0, 1])
    # add-one over vocab 4: p(0)=3/8, p(1)=2/8
    expected = math.exp(-(math.log(3 / 8) + math.log(2 / 8)) / 2)
    assert unigram_perplexity(train, val, vocab_size=4) == pytest.approx(expected)


def test_uniform_data_gives_vocab_size():
    rng = np.random.default_rng(0)
    train = np.repeat(np.arange(10), 1000)
    val = rng.integers(0, 10, 500)
    assert unigram_perplexity(train, val, vocab_size=10) == pytest.approx(10.0, rel=1e-6)
