"""Trivial baselines that put a model's numbers in context.

A language model's validation perplexity only means something next to what a unigram model (token
frequencies, nothing else) gets on the same tokens; a fine-tuned classifier's accuracy only next to
what TF-IDF n-grams + logistic regression get on the same split in a few seconds. scikit-learn is
an optional (dev) dependency, imported only when that baseline runs.
"""

from __future__ import annotations

import math
import time
from typing import Iterable, Literal, Sequence

import numpy as np

from fromzero.errors import FromzeroError
from fromzero.evaluation.metrics import classification_report


def unigram_perplexity(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int,
                       alpha: float = 1.0) -> float:
    """Perplexity of an add-`alpha` smoothed unigram model fit on `train_tokens`, scored on `val_tokens`."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    probs = (counts + alpha) / (counts.sum() + alpha * vocab_size)
    nll = -np.log(probs[np.asarray(val_tokens, dtype=np.int64)]).mean()
    return float(math.exp(nll))


def _texts_labels(examples: Iterable) -> tuple[list[str], list[int]]:
    """Accept ClassificationExample-like objects, dicts with text/label, or (text, label) pairs."""
    texts, labels = [], []
    for ex in examples:
        if isinstance(ex, dict):
            text, label = ex["text"], ex["label"]
        elif isinstance(ex, (tuple, list)):
            text, label = ex
        else:
            text, label = ex.text, ex.label
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def tfidf_logreg(train: Sequence, test: Sequence, analyzer: Literal["char", "word", "char_wb"] = "char",
                 ngram_range: tuple[int, int] = (1, 3), C: float = 3.0, max_features: int | None = None,
                 label_names: Sequence[str] | None = None, val: Sequence | None = None, seed: int = 0) -> dict:
    """Fit on `train`, score on `test` (and `val` if given): `classification_report` keys, the test
    predictions (class ids, for paired comparisons) and timing.

    `analyzer="char"` suits Chinese (no word boundaries); `"word"` with (1, 2)-grams suits English.
    Sub-linear TF and C=3 were the best of {3, 10} on both built-in validation splits; the saga
    solver fits the 3-class tweets ~25x faster than lbfgs at the same accuracy.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise FromzeroError("the TF-IDF baseline needs scikit-learn; install it with `pip install scikit-learn`") from e
    train_x, train_y = _texts_labels(train)
    test_x, test_y = _texts_labels(test)
    if not train_x or not test_x:
        raise FromzeroError(f"baseline got {len(train_x)} training and {len(test_x)} test examples; "
                            "both splits need at least one example")
    if len(set(train_y)) < 2:
        raise FromzeroError("training data has a single label; a classifier needs at least two classes")
    start = time.perf_counter()
    # for words, keep one-character tokens ("I", "a") that sklearn's default pattern drops
    words = {"token_pattern": r"(?u)\b\w+\b"} if analyzer == "word" else {}
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(ngram_range), sublinear_tf=True,
                                 max_features=max_features, **words)
    features = vectorizer.fit_transform(train_x)
    model = LogisticRegression(C=C, solver="saga", max_iter=2000, random_state=seed)
    model.fit(features, train_y)
    fit_seconds = time.perf_counter() - start
    pred = model.predict(vectorizer.transform(test_x)).tolist()
    if label_names is None:
        label_names = [str(i) for i in range(max(train_y + test_y + pred) + 1)]
    report = {**classification_report(test_y, pred, label_names), "predictions": pred}
    if val is not None:
        val_x, val_y = _texts_labels(val)
        val_report = classification_report(val_y, model.predict(vectorizer.transform(val_x)).tolist(), label_names)
        report.update(val_accuracy=val_report["accuracy"], val_macro_f1=val_report["macro_f1"], n_val=len(val_x))
    report.update({"n_train": len(train_x), "n_test": len(test_x), "n_features": len(vectorizer.vocabulary_),
                   "fit_seconds": round(fit_seconds, 2), "analyzer": analyzer, "ngram_range": list(ngram_range),
                   "C": C})
    return report
