"""Scoring and using saved fine-tuned models: evaluate_saved (one model, or several classifiers as
an ensemble), predict on raw inputs, and the checks that a model fits the task it is scored on.

    evaluate_saved("runs/ft-sentiment-zh/model")                  # test metrics again, from disk
    evaluate_saved(["runs/s0/model", "runs/s1/model"])            # mean class probabilities of both
    predict("runs/ft-sentiment-zh/model", ["这本书很好看"])         # ["positive"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from fromzero.errors import FromzeroError
from fromzero.evaluation.metrics import classification_report
from fromzero.tasks import label_names, load_task_data, task_kind
from fromzero.tuning.artifacts import load_finetuned
from fromzero.tuning.kinds import TaskKind


def evaluate_saved(model_dir: str | Path | Sequence[str | Path], task: str | None = None, split: str = "test",
                   base_model: str | Path | None = None, data_seed: int | None = None) -> dict[str, Any]:
    """Metrics of a saved fine-tuned model on a split of its task (or of another task with the same labels).

    data_seed picks the split; by default the one the model was fine-tuned on (its finetune.json).

    Several classifier folders (e.g. one recipe fine-tuned with different seeds) are scored as an
    ensemble: their class probabilities are averaged, each model reading the text with its own tokenizer.
    """
    dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    loaded = [load_finetuned(dirs[0], base_model)] if len(dirs) == 1 else load_classifiers(dirs, base_model)
    task = task or loaded[0][2]["task"]
    data_seed = loaded[0][2].get("data_seed", 0) if data_seed is None else data_seed
    for d, (_, kind, meta) in zip(dirs, loaded):
        check_task_fits(d, kind, meta, task, data_seed)
    examples = load_task_data(task, split, data_seed)
    if len(loaded) == 1:
        model, kind, _ = loaded[0]
        return kind.evaluate(model, examples, split)[0]
    pred = class_probabilities(loaded, examples, split).argmax(-1).tolist()
    return {**classification_report([e.label for e in examples], pred, loaded[0][2]["labels"]),
            "ensemble": [str(d) for d in dirs]}


def load_classifiers(dirs: Sequence[str | Path], base_model: str | Path | None = None) -> list[tuple]:
    """Saved classifiers to be scored together (load_finetuned each): all classifiers, one label list."""
    if not dirs:
        raise FromzeroError("no model folder given; pass one fine-tuned model, or several classifiers to ensemble")
    loaded = [load_finetuned(d, base_model) for d in dirs]
    metas = [meta for _, _, meta in loaded]
    if any(meta["kind"] != "classification" for meta in metas):
        kinds = ", ".join(f"{d} ({meta['kind']})" for d, meta in zip(dirs, metas))
        raise FromzeroError("an ensemble averages class probabilities, so every model must be a classifier; "
                            f"got {kinds}")
    for d, meta in zip(dirs[1:], metas[1:]):
        if meta["labels"] != metas[0]["labels"]:
            raise FromzeroError(f"{d} predicts labels {meta['labels'][:20]} but {dirs[0]} predicts "
                                f"{metas[0]['labels'][:20]}; an ensemble needs one label list, in one order")
    return loaded


def class_probabilities(loaded: Sequence[tuple], examples: Sequence[Any], split: str = "test") -> torch.Tensor:
    """[examples, classes]: the mean softmax of classifiers from load_classifiers over the examples."""
    return torch.stack([kind.probabilities(model, kind.rows(examples, split)) for model, kind, _ in loaded]).mean(0)


def check_task_fits(model_dir: str | Path, kind: TaskKind, meta: dict, task: str, data_seed: int = 0) -> None:
    """A saved model (load_finetuned's kind and meta) can be scored on `task` if the kinds match and, for a
    model with a label head, the labels do; on its own task, only with the split it was fine-tuned on
    (another seed's test split holds its training data)."""
    trained = meta.get("data_seed", 0)
    if str(task) == str(meta["task"]) and data_seed != trained:
        raise FromzeroError(f"{model_dir} was fine-tuned on the data_seed={trained} split of {task}; the "
                            f"data_seed={data_seed} split would score it on examples it was trained on. "
                            f"Evaluate it with data_seed={trained}")
    if task_kind(task, data_seed) != meta["kind"]:
        raise FromzeroError(f"{model_dir} is a {meta['kind']} model but task {task} is {task_kind(task, data_seed)}; "
                            "evaluate it on a task of the same kind")
    if kind.head_modules:
        names = label_names(task, data_seed)
        if list(names) != list(meta["labels"]):
            raise FromzeroError(f"task {task} has labels {names[:20]} but {model_dir} was trained on "
                                f"{meta['labels'][:20]}; the label sets (and their order) must match")


def predict(model_dir: str | Path, inputs: Sequence[Any], base_model: str | Path | None = None) -> list:
    """Predictions for raw inputs: classification -> label names; tagging -> [(unit, tag), ...] per text
    (characters, or whitespace-separated words for word-level tasks); seq2seq -> output strings;
    chat -> the assistant's reply to each user message (or message list)."""
    if isinstance(inputs, str):
        raise FromzeroError("predict takes a list of inputs; wrap a single text in a list")
    if not inputs:
        return []
    model, kind, _ = load_finetuned(model_dir, base_model)
    return kind.predict(model, list(inputs))


__all__ = ["check_task_fits", "class_probabilities", "evaluate_saved", "load_classifiers", "predict"]
