"""TF-IDF + logistic regression on the built-in classification tasks (fixed-seed 80/10/10 splits).

    .venv/bin/python benchmarks/baseline_tfidf.py [--seed 0] [--report-dir runs/baseline_tfidf]

Prints validation and test accuracy / macro-F1 per task; with --report-dir also writes a JSON report
and a confusion-matrix PNG per task. Needs scikit-learn (`pip install scikit-learn`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fromzero.baselines_tfidf import tfidf_logreg
from fromzero.evaluation import confusion_matrix_png, write_report
from fromzero.tasks import label_names, load_task_data

# Chinese has no spaces: character n-grams; English: word uni+bigrams.
SETTINGS = {"reviews_zh": dict(analyzer="char", ngram_range=(1, 3)),
            "tweets_en": dict(analyzer="word", ngram_range=(1, 2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-dir", type=Path, default=None)
    args = parser.parse_args()
    print(f"{'task':<11} {'features':<14} {'train':>6} {'test':>5}  {'val acc':>7}  {'test acc':>8}  "
          f"{'test F1':>7}  {'fit s':>5}")
    for task, kw in SETTINGS.items():
        train = load_task_data(task, "train", seed=args.seed)
        names = label_names(task)
        test = tfidf_logreg(train, load_task_data(task, "test", seed=args.seed), label_names=names,
                            val=load_task_data(task, "val", seed=args.seed), seed=args.seed, **kw)
        feats = f"{kw['analyzer']} {kw['ngram_range'][0]}-{kw['ngram_range'][1]}gram"
        print(f"{task:<11} {feats:<14} {test['n_train']:>6} {test['n_test']:>5}  {test['val_accuracy']:>7.4f}  "
              f"{test['accuracy']:>8.4f}  {test['macro_f1']:>7.4f}  {test['fit_seconds']:>5.1f}")
        if args.report_dir:
            write_report(args.report_dir / f"{task}.json", test, task=task, split="test",
                         config={"seed": args.seed, **kw})
            confusion_matrix_png(test["confusion_matrix"], names, args.report_dir / f"{task}_confusion.png",
                                 title=f"{task} TF-IDF + LR (test)")


if __name__ == "__main__":
    main()
