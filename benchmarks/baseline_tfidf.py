"""TF-IDF + logistic regression on the built-in classification tasks (fixed-seed 80/10/10 splits).

    .venv/bin/python benchmarks/baseline_tfidf.py [--seed 0] [--report-dir runs/baseline_tfidf]
    .venv/bin/python benchmarks/baseline_tfidf.py --against runs/sent-s0/model runs/sent-s1/model

Prints validation and test accuracy / macro-F1 per task; with --report-dir also writes a JSON report
and a confusion-matrix PNG per task. --against compares fine-tuned classifiers (several = their
ensemble, as `fromzero eval` scores it) with the baseline on the same test reviews: how many each
gets right that the other misses, and the exact McNemar test of that split (the paired test: both
score the same examples, so it sees differences an accuracy interval would call noise). Needs
scikit-learn (`pip install scikit-learn`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fromzero.errors import FromzeroError
from fromzero.evaluation import confusion_matrix_png, write_report
from fromzero.evaluation.baselines import tfidf_logreg
from fromzero.tasks import label_names, load_task_data
from fromzero.tuning.ensemble import check_task_fits, class_probabilities, load_classifiers

# Chinese has no spaces: character n-grams; English: word uni+bigrams.
SETTINGS = {"reviews_zh": dict(analyzer="char", ngram_range=(1, 3)),
            "tweets_en": dict(analyzer="word", ngram_range=(1, 2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-dir", type=Path, default=None)
    parser.add_argument("--against", nargs="+", type=Path, help="fine-tuned classifier folder(s) of one task")
    args = parser.parse_args()
    loaded = load_classifiers(args.against) if args.against else []
    only = {loaded[0][2]["task"]} if loaded else set(SETTINGS)
    if not only <= set(SETTINGS):
        raise FromzeroError(f"{args.against[0]} was fine-tuned on {loaded[0][2]['task']}; the baseline covers "
                            f"{', '.join(SETTINGS)}")
    for d, (_, kind, meta) in zip(args.against or [], loaded):
        check_task_fits(d, kind, meta, meta["task"], args.seed)
    print(f"{'task':<11} {'features':<14} {'train':>6} {'test':>5}  {'val acc':>7}  {'test acc':>8}  "
          f"{'test F1':>7}  {'fit s':>5}")
    for task, kw in SETTINGS.items():
        if task not in only:
            continue
        train = load_task_data(task, "train", seed=args.seed)
        test_examples = load_task_data(task, "test", seed=args.seed)
        names = label_names(task)
        test = tfidf_logreg(train, test_examples, label_names=names,
                            val=load_task_data(task, "val", seed=args.seed), seed=args.seed, **kw)
        feats = f"{kw['analyzer']} {kw['ngram_range'][0]}-{kw['ngram_range'][1]}gram"
        print(f"{task:<11} {feats:<14} {test['n_train']:>6} {test['n_test']:>5}  {test['val_accuracy']:>7.4f}  "
              f"{test['accuracy']:>8.4f}  {test['macro_f1']:>7.4f}  {test['fit_seconds']:>5.1f}")
        baseline_pred = test.pop("predictions")
        if loaded:
            compare(loaded, args.against, test_examples, baseline_pred, test["accuracy"])
        if args.report_dir:
            write_report(args.report_dir / f"{task}.json", test, task=task, split="test",
                         config={"seed": args.seed, **kw})
            confusion_matrix_png(test["confusion_matrix"], names, args.report_dir / f"{task}_confusion.png",
                                 title=f"{task} TF-IDF + LR (test)")


def compare(loaded: list, dirs: list[Path], test: list, baseline_pred: list[int], baseline_acc: float) -> None:
    """Paired comparison on the same test examples: the discordant pairs and their exact McNemar test."""
    pred = class_probabilities(loaded, test).argmax(-1).tolist()
    gold = [e.label for e in test]
    model_only = sum(p == g != b for p, b, g in zip(pred, baseline_pred, gold))
    baseline_only = sum(b == g != p for p, b, g in zip(pred, baseline_pred, gold))
    acc = sum(p == g for p, g in zip(pred, gold)) / len(gold)
    p_value = mcnemar_exact(model_only, baseline_only)
    what = f"ensemble of {len(dirs)}" if len(dirs) > 1 else str(dirs[0])
    print(f"  {what}: test accuracy {acc:.4f} vs TF-IDF {baseline_acc:.4f}; right where TF-IDF is wrong: {model_only}, "
          f"wrong where TF-IDF is right: {baseline_only}; exact McNemar p = {p_value:.3f}")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under "equally good", the b + c discordant examples split 50/50."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n) if n else 1.0


if __name__ == "__main__":
    main()
