"""Fine-tuning, end to end: task data -> pretrained (or fresh) model + task head -> PEFT / freezing
-> Trainer (best checkpoint by the validation metric) -> test metrics, report, saved model.

    cfg = build(FinetuneConfig, load_recipe("finetune/sentiment-zh"))
    summary = run_finetune(cfg)                                   # also written to out_dir/summary.json
    evaluate_saved("runs/ft-sentiment-zh/model")                  # test metrics again, from disk
    predict("runs/ft-sentiment-zh/model", ["这本书很好看"])         # ["positive"]

`model` is a pretrained checkpoint folder (model.safetensors + config.json + tokenizer.json: a
fromzero decoder, encoder or T5, or a supported Hugging Face folder), or "scratch": a randomly
initialised decoder shaped by `scratch.model`, with `scratch.tokenizer_path`'s tokenizer or one
trained on the task's own training texts. Scratch vs pretrained on the same recipe is how to see
what pretraining buys.

The saved folder (out_dir/model) holds finetune.json (task, kind, labels, head, max_len, PEFT
method, base model), tokenizer.json and either the whole fine-tuned model (backbone in its own
format + head.safetensors) or, with PEFT, only adapter.safetensors + adapter_config.json (adapter
weights and the head); the base model is then read from finetune.json's `base_model` (or the
base_model= argument) and must be the one the adapter was trained on (checked by shapes and by the
base's SHA-256).

Peak memory is the process's peak resident set size (getrusage ru_maxrss): everything the process
ever held, Python, torch, data and model included. tracemalloc would miss torch's tensor memory,
which is allocated outside Python's allocator.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from fromzero.config import build, to_dict
from fromzero.errors import FromzeroError
from fromzero.peft import PeftConfig, apply_peft, layerwise_param_groups, trainable_parameters
from fromzero.tasks import label_names, load_task_data, task_kind
from fromzero.tokenizer import Tokenizer
from fromzero.train.optim import build_scheduler, param_groups
from fromzero.train.run_dir import check_fresh_start
from fromzero.train.trainer import TrainConfig, Trainer
from fromzero.tuning.artifacts import (
    FORMAT,
    HEAD_FILE,
    META,
    file_sha256,
    load_finetuned,
    read_meta,
    save_finetuned,
)
from fromzero.tuning.backbone import (
    DEFAULT_MODEL,
    ScratchConfig,
    check_vocab,
    family,
    load_backbone,
    save_backbone,
    scratch_backbone,
    task_texts,
    with_dropout,
)
from fromzero.tuning.collate import TaskBatches
from fromzero.tuning.ensemble import check_task_fits, class_probabilities, evaluate_saved, load_classifiers, predict
from fromzero.tuning.kinds import TaskKind
from fromzero.tuning.registry import KindSettings, check_fits, make_kind
from fromzero.tuning.sft import ChatTemplate


def _finetune_train_defaults() -> TrainConfig:
    return TrainConfig(out_dir="runs/finetune", max_steps=600, batch_size=32, lr=3e-4, warmup_steps=50,
                       weight_decay=0.01, eval_every=100, log_every=20)


@dataclass
class FinetuneConfig:
    task: str = "reviews_zh"  # a built-in task (fromzero.tasks.TASKS) or a .jsonl/.csv file / directory
    model: str = DEFAULT_MODEL  # pretrained checkpoint folder, or "scratch"
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=_finetune_train_defaults)
    max_len: int = 128  # tokens per example (capped by the model's max_seq_len)
    pooling: Literal["auto", "cls", "last", "mean"] = "auto"  # classification: see tasks/heads.py
    dropout: float = 0.1  # before the task head
    backbone_dropout: float | None = None  # dropout inside a pretrained backbone while fine-tuning (None: as saved)
    crf: bool = False  # tagging: a CRF layer (learned tag transitions, sequence-level loss) on the token head
    data_seed: int = 0  # the 80/10/10 split
    max_train_examples: int | None = None  # use only the first N training examples (quick runs)
    max_val_examples: int | None = 1000  # validation subset scored at every eval
    max_test_examples: int | None = None
    eval_batch_size: int = 64
    pack: bool = True  # chat: pack conversations into full rows
    max_new_tokens: int | None = None  # seq2seq/chat generation limit (default: what fits the context)
    chat_template: ChatTemplate = field(default_factory=ChatTemplate)

    def __post_init__(self) -> None:
        if self.max_len < 4:
            raise FromzeroError(f"max_len must be at least 4 tokens, got {self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise FromzeroError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backbone_dropout is not None and not 0.0 <= self.backbone_dropout < 1.0:
            raise FromzeroError(f"backbone_dropout must be in [0, 1) or null, got {self.backbone_dropout}")
        for key in ("max_train_examples", "max_val_examples", "max_test_examples"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise FromzeroError(f"{key} must be a positive number or null, got {v}")


# ----------------------------------------------------------------------------- task kinds


def _unit(examples: Sequence[Any]) -> str:
    return "char" if all(len(t) == 1 for e in examples[:500] for t in e.tokens) else "word"


def kind_settings(cfg: FinetuneConfig) -> KindSettings:
    """The part of the recipe's config that the task kind reads."""
    return KindSettings(pooling=cfg.pooling, dropout=cfg.dropout, crf=cfg.crf, pack=cfg.pack,
                        max_new_tokens=cfg.max_new_tokens, chat_template=cfg.chat_template,
                        eval_batch_size=cfg.eval_batch_size,
                        virtual_tokens=cfg.peft.num_virtual_tokens if cfg.peft.method == "prompt" else 0)


def _peft_config(cfg: PeftConfig, kind: TaskKind) -> PeftConfig:
    """The task head always trains: add it to modules_to_save for every method that freezes the base."""
    if not kind.head_modules or cfg.method == "none":
        return cfg
    missing = [h for h in kind.head_modules if not any(m in (h, f"^{h}$") for m in cfg.modules_to_save)]
    return build(PeftConfig, {**to_dict(cfg), "modules_to_save": [*cfg.modules_to_save, *missing]}) if missing else cfg


# ----------------------------------------------------------------------------- the recipe


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _take(examples: list, n: int | None) -> list:
    return examples if n is None else examples[:n]


def run_finetune(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune, evaluate on test, save; returns the summary (also out_dir/summary.json)."""
    t_start = time.perf_counter()
    out = Path(cfg.train.out_dir)
    check_fresh_start(out, resume, cfg.train.overwrite)  # before anything (base weights, model/) is written
    kind_name = task_kind(cfg.task, cfg.data_seed)
    if cfg.model != "scratch":  # a backbone that cannot serve the task fails here, before data preparation
        backbone, tok = load_backbone(cfg.model), Tokenizer.load(cfg.model)
        check_fits(kind_name, family(backbone), cfg.model)
    labels = label_names(cfg.task, cfg.data_seed)
    data = {s: load_task_data(cfg.task, s, cfg.data_seed) for s in ("train", "val", "test")}
    data["train"] = _take(data["train"], cfg.max_train_examples)
    data["val"] = _take(data["val"], cfg.max_val_examples)
    data["test"] = _take(data["test"], cfg.max_test_examples)
    if not data["val"]:
        raise FromzeroError(f"task {cfg.task} has an empty validation split; add more examples")

    save_dir = out / "model"
    if cfg.model == "scratch":
        backbone, tok = scratch_backbone(cfg.scratch, task_texts(data["train"], kind_name), cfg.max_len, cfg.train.seed)
        base_path = None
    else:
        base_path = Path(cfg.model).resolve()
        if cfg.backbone_dropout is not None:
            backbone = with_dropout(backbone, cfg.backbone_dropout)
    check_vocab(backbone, tok, cfg.model)
    unit = _unit(data["train"]) if kind_name == "tagging" else "char"
    kind = make_kind(kind_name, tok, backbone, cfg.max_len, labels, kind_settings(cfg), unit)

    torch.manual_seed(cfg.train.seed)
    model = kind.build_model(backbone)
    peft_cfg = _peft_config(cfg.peft, kind)
    if peft_cfg.method != "none" and base_path is None:  # a PEFT run on a fresh model: keep its base weights
        save_backbone(backbone, save_dir / "base")
        base_path = (save_dir / "base").resolve()
    if peft_cfg.method != "none" or peft_cfg.freeze != "none":
        model = apply_peft(model, peft_cfg)
    trainable, total = trainable_parameters(model)
    print(f"task {cfg.task} ({kind_name}): {len(data['train'])} train / {len(data['val'])} val / "
          f"{len(data['test'])} test; model {cfg.model}; peft {peft_cfg.method}, freeze {peft_cfg.freeze}; "
          f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")

    train_rows = kind.rows(data["train"], "train")
    kind.set_validation(data["val"])
    batches = TaskBatches(train_rows, cfg.train.batch_size, tok.pad_id, seed=cfg.train.seed)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        value = kind.validate(m)
        shown = f"val {kind.metric} {value:.4f}" if kind.metric != "neg_val_loss" else f"val loss {-value:.4f}"
        print(f"  {shown}", flush=True)
        # the Trainer keeps the checkpoint with the lowest val_loss: give it 1 - metric (or the loss)
        return {"val_loss": -value if kind.metric == "neg_val_loss" else 1.0 - value}

    trainer = Trainer(model, kind.objective, batches, eval_fn, cfg.train, save_extra=tok.save)
    if peft_cfg.layer_lr_decay != 1.0:
        _layerwise_optimizer(trainer, model, cfg.train, peft_cfg.layer_lr_decay)
    t_train = time.perf_counter()
    fit = trainer.fit(resume=resume)
    train_seconds = time.perf_counter() - t_train
    best = fit.get("best_checkpoint")
    if best and Path(best).is_dir():
        from fromzero.modules.weights import load_weights

        load_weights(model, best)  # evaluate and save the best validation checkpoint, not the last step

    metrics, predictions = kind.evaluate(model, data["test"], "test")
    meta = _meta(cfg, kind, kind_name, labels, unit, peft_cfg, base_path)
    save_finetuned(model, kind, tok, meta, save_dir)
    report, png = _write_report(out, cfg, kind, metrics, predictions, data["test"])

    main = metrics.get(_test_metric(kind))
    summary = {
        "task": cfg.task, "kind": kind_name, "model": cfg.model, "peft": peft_cfg.method, "freeze": peft_cfg.freeze,
        "metric": _test_metric(kind), "test_metric": main, "test": _headline(metrics),
        "best_val": None if fit.get("best_val_loss") is None else _from_val_loss(kind, fit["best_val_loss"]),
        "trainable_params": trainable, "total_params": total, "steps": fit["steps"], "stopped": fit["stopped"],
        "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t_start, "peak_rss_mb": peak_rss_mb(),
        "n_train": len(data["train"]), "n_val": len(data["val"]), "n_test": len(data["test"]),
        "saved_model": str(save_dir), "report": str(report), "confusion_matrix_png": png,
        "config": to_dict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n",
                                      encoding="utf-8")
    print(f"test {summary['metric']}: {main:.4f}  (trainable {trainable:,} / {total:,} params, "
          f"{summary['wall_seconds']:.0f} s, peak RSS {summary['peak_rss_mb']:.0f} MB) -> {save_dir}")
    return summary


def _layerwise_optimizer(trainer: Trainer, model: nn.Module, tcfg: TrainConfig, decay: float) -> None:
    """Replace the Trainer's optimizer by one whose groups carry layer-wise LR scales."""
    groups = layerwise_param_groups(model, tcfg.lr, decay, groups=param_groups(model, tcfg.weight_decay))
    trainer.optimizer = torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas))
    trainer.scheduler = build_scheduler(trainer.optimizer, tcfg.warmup_steps, tcfg.max_steps, tcfg.min_lr_ratio)


def _test_metric(kind: TaskKind) -> str:
    return {"classification": "accuracy", "seq2seq": "char_accuracy", "chat": "assistant_perplexity"}.get(
        kind.name, kind.metric)


def _from_val_loss(kind: TaskKind, val_loss: float) -> float:
    return val_loss if kind.metric == "neg_val_loss" else 1.0 - val_loss


def _headline(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _write_report(out: Path, cfg: FinetuneConfig, kind: TaskKind, metrics: dict, predictions: list,
                  examples: Sequence[Any]) -> tuple[Path, str | None]:
    from fromzero.evaluation import confusion_matrix_png, write_report

    extra: dict[str, Any] = {}
    if kind.name == "chat":
        extra["samples"] = predictions
    elif kind.name == "seq2seq":
        extra["samples"] = [{"source": e.source, "reference": e.target, "prediction": p}
                            for e, p in zip(examples[:20], predictions[:20])]
    report = write_report(out / "report.json", metrics, task=cfg.task, split="test", config=to_dict(cfg), extra=extra)
    png = None
    if kind.name == "classification":
        png = str(confusion_matrix_png(metrics["confusion_matrix"], metrics["labels"], out / "confusion_matrix.png",
                                       title=f"{cfg.task} test (accuracy {metrics['accuracy']:.3f})"))
    return report, png


# ----------------------------------------------------------------------------- saving and loading


def _meta(cfg: FinetuneConfig, kind: TaskKind, kind_name: str, labels: Sequence[str], unit: str,
          peft_cfg: PeftConfig, base_path: Path | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "task": cfg.task, "kind": kind_name, "labels": list(labels), "unit": unit,
        "max_len": cfg.max_len, "pooling": cfg.pooling, "dropout": cfg.dropout, "crf": cfg.crf, "pack": cfg.pack,
        "max_new_tokens": cfg.max_new_tokens, "chat_template": to_dict(cfg.chat_template), "data_seed": cfg.data_seed,
        "peft": to_dict(peft_cfg), "adapter": peft_cfg.method != "none",
        "base_model": str(base_path) if base_path is not None and peft_cfg.method != "none" else None,
    }
    if meta["base_model"]:
        weights = Path(meta["base_model"]) / "model.safetensors"
        meta["base_model_sha256"] = file_sha256(weights) if weights.is_file() else None
    return meta


__all__ = ["DEFAULT_MODEL", "FORMAT", "HEAD_FILE", "META", "FinetuneConfig", "ScratchConfig", "check_task_fits",
           "class_probabilities", "evaluate_saved", "kind_settings", "load_backbone", "load_classifiers",
           "load_finetuned", "make_kind", "peak_rss_mb", "predict", "read_meta", "run_finetune", "save_backbone",
           "with_dropout"]
