"""Metrics against hand-computed values (and sklearn/seqeval when installed), reports, TF-IDF baseline."""

import json
import math
import random
import sys

import numpy as np
import pytest

from fromzero.errors import FromzeroError
from fromzero.evaluation import (
    accuracy,
    char_accuracy,
    classification_report,
    confusion_matrix,
    confusion_matrix_png,
    edit_distance,
    entity_f1,
    entity_report,
    exact_match,
    get_entities,
    macro_f1,
    perplexity,
    tag_accuracy,
    write_report,
)

# ----------------------------------------------------------------------------- classification


def test_classification_hand_computed():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 0]
    assert accuracy(y_true, y_pred) == pytest.approx(0.5)
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    # a: P 1/3 R 1/2 F 0.4 ; b: P 2/3 R 1 F 0.8 ; c: never predicted -> P 0 R 0 F 0
    assert r["per_class"]["a"]["f1"] == pytest.approx(0.4)
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["macro_f1"] == pytest.approx(0.4)
    assert macro_f1(y_true, y_pred) == pytest.approx(0.4)
    json.dumps(r)  # JSON-able as is


def test_classification_edge_cases():
    assert accuracy([], []) == 0.0
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(FromzeroError, match="one prediction per example"):
        accuracy([0, 1], [0])
    with pytest.raises(FromzeroError, match="outside"):
        classification_report([0, 3], [0, 0], ["a", "b"])
    # a class absent from the references but predicted still counts in macro-F1 (sklearn's default)
    assert macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0) / 2)


def test_classification_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    y_true = [rng.randrange(4) for _ in range(300)]
    y_pred = [t if rng.random() < 0.6 else rng.randrange(4) for t in y_true]
    r = classification_report(y_true, y_pred, ["w", "x", "y", "z"])
    assert r["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert r["macro_f1"] == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))
    assert np.array_equal(np.array(r["confusion_matrix"]), metrics.confusion_matrix(y_true, y_pred))
    p, rec, f, s = metrics.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    assert [r["per_class"][n]["recall"] for n in "wxyz"] == pytest.approx(rec.tolist())


# ----------------------------------------------------------------------------- entities


@pytest.mark.parametrize("tags, expected", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["O", "I-PER", "I-PER"], [("PER", 1, 2)]),                      # I- after O starts an entity
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),   # type change starts a new one
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    (["B-ORG", "I-ORG"], [("ORG", 0, 1)]),                           # entity at the end of the sentence
    (["O", "O"], []),
    # BIOES
    (["S-PER", "B-LOC", "I-LOC", "E-LOC", "E-LOC"], [("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4)]),
    (["I-PER", "E-PER", "I-PER"], [("PER", 0, 1), ("PER", 2, 2)]),   # I- after E- starts a new one
    (["B-LOC", "S-LOC"], [("LOC", 0, 0), ("LOC", 1, 1)]),
])
def test_get_entities(tags, expected):
    assert get_entities(tags) == expected


def test_entity_report_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]  # wrong type; span too short
    r = entity_report(true, pred)
    assert (r["n_true"], r["n_pred"], r["n_correct"]) == (3, 3, 1)
    assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(1 / 3)
    assert r["per_type"]["PER"]["f1"] == 1.0
    assert r["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_type"]["ORG"]["precision"] == pytest.approx(0.0)
    assert entity_f1(true, true) == 1.0
    assert entity_f1([["O"]], [["O"]]) == 0.0  # no entities at all: 0, as seqeval reports
    assert tag_accuracy(true, pred) == pytest.approx(5 / 7)


def test_entity_errors():
    with pytest.raises(FromzeroError, match="not BIO"):
        get_entities(["B-PER", "PER"])
    with pytest.raises(FromzeroError, match="one tag per token"):
        entity_report([["O", "O"]], [["O"]])


def _random_tags(rng, n, prefixes):
    return [["O" if rng.random() < 0.4 else f"{rng.choice(prefixes)}-{rng.choice(['PER', 'LOC', 'ORG'])}"
             for _ in range(rng.randrange(1, 12))] for _ in range(n)]


@pytest.mark.parametrize("prefixes", ["BI", "BIES"])
def test_entity_parity_with_seqeval(prefixes):
    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities as seqeval_entities

    rng = random.Random(1)
    true = _random_tags(rng, 200, prefixes)
    pred = [[t if rng.random() < 0.7 else rng.choice(["O", f"{rng.choice(prefixes)}-PER", "I-LOC"]) for t in s]
            for s in true]
    for seq in true[:50]:
        assert get_entities(seq) == seqeval_entities(seq)
    r = entity_report(true, pred)
    assert r["f1"] == pytest.approx(seqeval.f1_score(true, pred))
    assert r["precision"] == pytest.approx(seqeval.precision_score(true, pred))
    assert r["recall"] == pytest.approx(seqeval.recall_score(true, pred))
    theirs = seqeval.classification_report(true, pred, output_dict=True)
    for kind, v in r["per_type"].items():
        assert v["f1"] == pytest.approx(theirs[kind]["f1-score"])
        assert v["support"] == theirs[kind]["support"]
    assert r["macro_f1"] == pytest.approx(theirs["macro avg"]["f1-score"])


# ----------------------------------------------------------------------------- seq2seq, LM


def test_seq2seq_metrics():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert char_accuracy(["abcd"], ["abcd"]) == 1.0
    # one insertion shifts every later position but costs a single edit: 1 - 1/4
    assert char_accuracy(["abcd"], ["xabcd"]) == pytest.approx(0.75)
    assert char_accuracy(["ab", "cd"], ["ab", "zzzzzzzz"]) == 0.0  # floored at zero
    assert char_accuracy(["zhong1 guo2"], ["zhong1 guo3"]) == pytest.approx(1 - 1 / 11)
    assert exact_match(["a b", "c"], [" a b ", "d"]) == 0.5
    assert exact_match(["a b"], [" a b "], strip=False) == 0.0


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(10)) == pytest.approx(10.0)
    assert perplexity(1e6) == math.inf
    with pytest.raises(FromzeroError, match="NaN"):
        perplexity(float("nan"))


# ----------------------------------------------------------------------------- reports


def test_write_report(tmp_path):
    metrics = {"accuracy": np.float32(0.5), "cm": np.array([[1, 2], [3, 4]]), "ppl": math.inf, "n": np.int64(7)}
    path = write_report(tmp_path / "sub" / "report.json", metrics, task="reviews_zh", split="test",
                        config={"lr": 1e-3}, extra={"note": "中文"})
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["task"] == "reviews_zh" and data["split"] == "test" and data["note"] == "中文"
    assert data["metrics"] == {"accuracy": 0.5, "cm": [[1, 2], [3, 4]], "ppl": "inf", "n": 7}
    assert data["config"] == {"lr": 1e-3} and "created" in data
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left behind


@pytest.mark.parametrize("labels", [["negative", "neutral", "positive"], ["负面", "中性", "正面"]])
def test_confusion_matrix_png(tmp_path, labels, recwarn):
    path = confusion_matrix_png([[5, 1, 0], [2, 7, 1], [0, 0, 3]], labels, tmp_path / "cm.png", normalize=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 2000
    assert not [w for w in recwarn if "missing" in str(w.message)]  # no glyph warnings leak out
    with pytest.raises(FromzeroError, match="does not match"):
        confusion_matrix_png([[1, 2], [3, 4]], labels, tmp_path / "bad.png")


# ----------------------------------------------------------------------------- baseline


def test_tfidf_baseline_tiny():
    pytest.importorskip("sklearn")
    from fromzero.evaluation.baselines import tfidf_logreg

    pos = ["很好 喜欢", "非常好 满意", "好 推荐", "喜欢 满意", "好看 喜欢"]
    neg = ["很差 失望", "差 退货", "失望 不满意", "太差 退货", "差劲 失望"]
    train = [(t, 1) for t in pos] + [(t, 0) for t in neg]
    test = [{"text": "很好 推荐", "label": 1}, {"text": "太差 失望", "label": 0}]
    r = tfidf_logreg(train, test, analyzer="char", ngram_range=(1, 2), label_names=["neg", "pos"], val=test)
    assert r["accuracy"] == 1.0 and r["val_accuracy"] == 1.0
    assert r["n_train"] == 10 and r["labels"] == ["neg", "pos"]
    with pytest.raises(FromzeroError, match="single label"):
        tfidf_logreg([(t, 1) for t in pos], test)


def test_tfidf_baseline_without_sklearn(monkeypatch):
    from fromzero.evaluation.baselines import tfidf_logreg

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.feature_extraction.text", None)
    with pytest.raises(FromzeroError, match="pip install scikit-learn"):
        tfidf_logreg([("a", 0), ("b", 1)], [("a", 0)])


def test_bio_viterbi_is_the_best_valid_sequence():
    # brute force over all tag sequences: the decoder must return the highest-scoring well-formed one
    import itertools

    from fromzero.tuning.bio import allowed_transitions, bio_scores, viterbi

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    start_ok, step_ok = allowed_transitions(labels)
    rules = bio_scores(labels)
    assert bio_scores(["B-PER", "I-PER"]) is None and bio_scores(["B", "M", "E", "S"]) is None  # not plain BIO
    assert not start_ok[2] and step_ok[1, 2] and step_ok[2, 2] and not step_ok[0, 2] and not step_ok[1, 4]

    def valid(seq):
        return start_ok[seq[0]] and all(step_ok[a, b] for a, b in zip(seq, seq[1:]))

    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 5):
        for _ in range(20):
            lp = np.log(rng.dirichlet(np.ones(len(labels)), size=n))
            best = max((s for s in itertools.product(range(len(labels)), repeat=n) if valid(s)),
                       key=lambda s: sum(lp[i, t] for i, t in enumerate(s)))
            assert viterbi(lp, *rules) == list(best)
    # the per-position argmax "O I-PER" becomes a whole entity or nothing
    lp = np.log(np.array([[0.6, 0.3, 0.02, 0.04, 0.04], [0.1, 0.05, 0.8, 0.03, 0.02]]))
    assert [labels[t] for t in viterbi(lp, *rules)] == ["B-PER", "I-PER"]
    assert viterbi(np.zeros((0, 5)), *rules) == []


def test_crf_likelihood_and_decoding_match_brute_force():
    """log-partition, gold score and Viterbi of the CRF against enumerating every tag sequence,
    with unlabelled (-100) positions skipped and rows of different lengths."""
    import itertools

    import torch

    from fromzero.tuning.bio import viterbi
    from fromzero.tuning.crf import CRF

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    crf = CRF(labels)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    start, trans, end = (t.double() for t in crf.scores())
    em = torch.randn(2, 6, len(labels), dtype=torch.float64)
    tags = torch.tensor([[-100, 1, 2, -100, 0, -100], [-100, 3, 4, 4, -100, -100]])

    def score(e, seq):
        return (start[seq[0]] + sum(e[i, t] for i, t in enumerate(seq))
                + sum(trans[a, b] for a, b in zip(seq, seq[1:])) + end[seq[-1]])

    total, n_total = 0.0, 0
    for row in range(2):
        at = (tags[row] != -100).nonzero().flatten()
        e, gold = em[row, at], tags[row, at].tolist()
        seqs = list(itertools.product(range(len(labels)), repeat=len(gold)))
        scores = torch.stack([score(e, s) for s in seqs])
        total += float(torch.logsumexp(scores, 0) - score(e, gold))
        n_total += len(gold)
        best = viterbi(e.numpy(), *crf.viterbi_scores())  # how Tagging decodes with a CRF
        assert best == list(seqs[int(scores.argmax())])
        assert all(labels[t] != "I-PER" or labels[p] in ("B-PER", "I-PER") for p, t in zip(best, best[1:]))
    assert abs(float(crf.nll(em.float(), tags)) - total / n_total) < 1e-4
    crf.nll(em.float(), tags).backward()
    assert crf.trans.grad.abs().sum() > 0 and crf.start.grad is not None
