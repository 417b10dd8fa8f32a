"""Evaluation metrics in plain Python/numpy, so evaluating never needs scikit-learn or seqeval.

Classification: accuracy, per-class precision/recall/F1, macro-F1, confusion matrix (sklearn's
conventions: a class never predicted has precision 0).
Tagging: entity-level P/R/F1 with seqeval's default (non-strict) semantics for BIO and BIOES: an
entity counts only if its type and exact span match, and an I- after O or after another type starts
a new entity, so a model is not punished twice for one bad B- tag.
Seq2seq: character accuracy (1 - edit distance / reference length over the corpus) and exact match.
Language modelling: perplexity from the mean negative log-likelihood per token.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np

from fromzero.errors import FromzeroError

# ----------------------------------------------------------------------------- classification


def _check_same_length(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) != len(y_pred):
        raise FromzeroError(f"got {len(y_true)} references but {len(y_pred)} predictions; "
                            "pass one prediction per example")


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to the reference (0.0 for empty input)."""
    _check_same_length(y_true, y_pred)
    if not y_true:
        return 0.0
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """Counts `cm[true, pred]` for integer labels 0..num_classes-1 (rows are references)."""
    _check_same_length(y_true, y_pred)
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise FromzeroError(f"labels must be integers in 0..{num_classes - 1}; "
                            "map label names to ids before computing a confusion matrix")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _prf(tp: float, n_pred: float, n_true: float) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def classification_report(y_true: Sequence[int], y_pred: Sequence[int],
                          label_names: Sequence[str] | None = None) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix, as one JSON-able dict.

    Classes are 0..len(label_names)-1 when names are given, else every label seen in either list
    (sklearn's default), so macro-F1 matches `sklearn.metrics.f1_score(average="macro")`.
    """
    _check_same_length(y_true, y_pred)
    if label_names is not None:
        classes = list(range(len(label_names)))
        names = [str(n) for n in label_names]
    else:
        classes = sorted(set(y_true) | set(y_pred))
        names = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    unknown = (set(y_true) | set(y_pred)) - set(index)
    if unknown:
        raise FromzeroError(f"labels {sorted(unknown)} are outside the {len(classes)} label names; "
                            "pass label_names covering every label id")
    cm = confusion_matrix([index[t] for t in y_true], [index[p] for p in y_pred], num_classes=len(classes))
    per_class = {}
    for i, name in enumerate(names):
        p, r, f = _prf(cm[i, i], cm[:, i].sum(), cm[i, :].sum())
        per_class[name] = {"precision": p, "recall": r, "f1": f, "support": int(cm[i, :].sum())}
    macro_f1 = float(np.mean([v["f1"] for v in per_class.values()])) if per_class else 0.0
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1, "per_class": per_class,
            "confusion_matrix": cm.tolist(), "labels": names, "n": len(y_true)}


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 (classes 0..num_classes-1, or the labels present)."""
    names = None if num_classes is None else [str(i) for i in range(num_classes)]
    return classification_report(y_true, y_pred, names)["macro_f1"]


# ----------------------------------------------------------------------------- entities (seqeval)


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not kind:
        raise FromzeroError(f"tag {tag!r} is not BIO/BIOES; use 'O' or 'B-TYPE', 'I-TYPE' (and 'E-', 'S-' for BIOES)")
    return prefix, kind


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities `(type, start, end_inclusive)` in one tag sequence, decoded like seqeval's default mode.

    An entity closes when the previous tag was E-/S-, when B-/S-/O follows, or when the type changes;
    it opens on B-/S-, on I-/E- after O or after a closed E-/S-, or on a type change. Malformed runs
    such as `O I-PER` therefore still yield an entity (lenient, like conlleval).
    """
    entities = []
    prev_prefix, prev_kind, start = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split_tag(tag)
        type_changed = kind != prev_kind
        ends = prev_prefix != "O" and (
            prev_prefix in ("E", "S") or prefix in ("B", "S", "O") or type_changed)
        if ends:
            entities.append((prev_kind, start, i - 1))
        starts = prefix != "O" and (
            prefix in ("B", "S") or prev_prefix in ("O", "E", "S") or type_changed)
        if starts:
            start = i
        prev_prefix, prev_kind = prefix, kind
    return entities


def entity_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """Micro P/R/F1 over exact (type, span) entity matches, plus per-type scores and macro-F1.

    Takes lists of tag sequences (one per sentence). With no entities at all, scores are 0.0, as in
    seqeval.
    """
    _check_same_length(true_tags, pred_tags)
    true_set: set[tuple[int, str, int, int]] = set()
    pred_set: set[tuple[int, str, int, int]] = set()
    for n, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise FromzeroError(f"sentence {n} has {len(t)} reference tags but {len(p)} predicted tags; "
                                "predict exactly one tag per token")
        true_set.update((n, *e) for e in get_entities(t))
        pred_set.update((n, *e) for e in get_entities(p))
    correct = true_set & pred_set
    types = sorted({e[1] for e in true_set | pred_set})
    per_type = {}
    for kind in types:
        tp = sum(e[1] == kind for e in correct)
        n_pred = sum(e[1] == kind for e in pred_set)
        n_true = sum(e[1] == kind for e in true_set)
        p, r, f = _prf(tp, n_pred, n_true)
        per_type[kind] = {"precision": p, "recall": r, "f1": f, "support": n_true}
    p, r, f = _prf(len(correct), len(pred_set), len(true_set))
    return {"precision": p, "recall": r, "f1": f,
            "macro_f1": float(np.mean([v["f1"] for v in per_type.values()])) if per_type else 0.0,
            "per_type": per_type, "n_true": len(true_set), "n_pred": len(pred_set), "n_correct": len(correct)}


def entity_f1(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Micro-averaged entity F1 (seqeval's `f1_score` default)."""
    return entity_report(true_tags, pred_tags)["f1"]


def tag_accuracy(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Token-level accuracy over all positions of all sentences (for POS tagging and segmentation)."""
    _check_same_length(true_tags, pred_tags)
    flat_t = [x for seq in true_tags for x in seq]
    flat_p = [x for seq in pred_tags for x in seq]
    if len(flat_t) != len(flat_p):
        raise FromzeroError("reference and predicted tag sequences differ in length; predict one tag per token")
    return accuracy(flat_t, flat_p)


# ----------------------------------------------------------------------------- seq2seq and LM


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def char_accuracy(references: Sequence[str], predictions: Sequence[str]) -> float:
    """1 - (total character edit distance / total reference characters), floored at 0.

    Positional comparison would count every character after one insertion as wrong; edit distance
    does not. Equals 1 - corpus character error rate.
    """
    _check_same_length(references, predictions)
    total = sum(len(r) for r in references)
    if total == 0:
        return float(all(p == "" for p in predictions)) if references else 0.0
    edits = sum(edit_distance(r, p) for r, p in zip(references, predictions))
    return max(0.0, 1.0 - edits / total)


def exact_match(references: Sequence[str], predictions: Sequence[str], strip: bool = True) -> float:
    """Fraction of predictions identical to the reference (after stripping outer whitespace)."""
    _check_same_length(references, predictions)
    if not references:
        return 0.0
    norm = (lambda s: s.strip()) if strip else (lambda s: s)
    return sum(norm(r) == norm(p) for r, p in zip(references, predictions)) / len(references)


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token, in nats); inf instead of an overflow."""
    if math.isnan(mean_nll):
        raise FromzeroError("mean NLL is NaN; the evaluation loss diverged - check the model and data")
    return math.exp(mean_nll) if mean_nll < 700 else math.inf
