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

import dataclasses
import hashlib
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
from fromzero.evaluation.metrics import classification_report
from fromzero.model.config import PRESETS, ModelConfig
from fromzero.model.encoder import EncoderConfig
from fromzero.peft import (
    PeftConfig,
    apply_peft,
    layerwise_param_groups,
    load_adapter,
    save_adapter,
    trainable_parameters,
)
from fromzero.peft.prompt import PromptTuningModel
from fromzero.tasks import label_names, load_task_data, task_kind
from fromzero.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from fromzero.train.optim import build_scheduler, param_groups
from fromzero.train.trainer import TrainConfig, Trainer
from fromzero.tuning.collate import TaskBatches, framing_for
from fromzero.tuning.heads import is_encoder
from fromzero.tuning.kinds import Chat, Classification, Seq2Seq, Tagging, TaskKind
from fromzero.tuning.seq2seq import seq2seq_format
from fromzero.tuning.sft import ChatFormat, ChatTemplate

DEFAULT_MODEL = "runs/quickstart/checkpoints/best"
META = "finetune.json"
HEAD_FILE = "head.safetensors"
FORMAT = "fromzero-finetuned"


@dataclass
class ScratchConfig:
    """How `model: scratch` builds a randomly initialised model: a decoder shaped by `model`, or a
    BERT-style encoder shaped by `encoder` (arch: encoder)."""

    arch: Literal["decoder", "encoder"] = "decoder"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**PRESETS["gpt-tiny"]))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Reuse a tokenizer (e.g. the pretrained model's folder) for a like-for-like comparison;
    # null = train one on the task's training texts with `tokenizer`.
    tokenizer_path: str | None = None
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(vocab_size=8192))


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


# ----------------------------------------------------------------------------- backbones


def load_backbone(path: str | Path) -> nn.Module:
    """A pretrained model from its folder: fromzero decoder / encoder / T5, or a Hugging Face folder."""
    from fromzero.model.auto import loader_for
    from fromzero.model.io import read_config

    path = Path(path)
    if not (path / "config.json").is_file():
        hint = " (run `fromzero quickstart` first, or set model: scratch)" if str(path) == DEFAULT_MODEL else ""
        raise FromzeroError(f"no pretrained model at {path}: it needs config.json + model.safetensors + "
                            f"tokenizer.json{hint}")
    data = read_config(path)
    if data.get("model_type") is None and "type_vocab_size" in data:  # a Trainer checkpoint of an encoder objective
        export = path.parent.parent / "encoder"
        raise FromzeroError(f"{path} is a training checkpoint of an encoder pretraining run; fine-tune the encoder "
                            f"it exported instead: model={export}")
    return loader_for(path)(path)


def with_dropout(backbone: nn.Module, p: float) -> nn.Module:
    """The same backbone (same weights) rebuilt with dropout p in every layer. Backbones pretrained
    without dropout (the short-budget recipes) overfit a small task within a few epochs; BERT
    fine-tunes with 0.1."""
    config = getattr(backbone, "config", None)
    if config is None or not hasattr(config, "dropout"):
        raise FromzeroError(f"backbone_dropout: {type(backbone).__name__} has no config.dropout; remove the key")
    if config.dropout == p:
        return backbone
    rebuilt = type(backbone)(dataclasses.replace(config, dropout=p))
    rebuilt.load_state_dict(backbone.state_dict())
    return rebuilt


def save_backbone(model: nn.Module, directory: Path) -> None:
    """Write a backbone in the format load_backbone reads back."""
    from fromzero.modules.weights import save_weights

    try:
        from fromzero.model.encoder import EncoderModel, save_encoder
    except ImportError:  # pragma: no cover - the encoder module is optional here
        EncoderModel = save_encoder = None  # type: ignore[assignment,misc]
    if EncoderModel is not None and isinstance(model, EncoderModel):
        save_encoder(model, directory)
    else:
        save_weights(model, directory)  # DecoderLM via save_model; others generic (T5: load_seq2seq_model)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _task_texts(examples: Sequence[Any], kind: str) -> list[str]:
    if kind == "classification":
        return [e.text for e in examples]
    if kind == "tagging":
        return ["".join(e.tokens) for e in examples]
    if kind == "seq2seq":
        return [t for e in examples for t in (e.source, e.target)]
    return [m["content"] for e in examples for m in e.messages]


def _scratch_backbone(cfg: FinetuneConfig, train_examples: Sequence[Any], kind: str) -> tuple:
    from fromzero.model.decoder import DecoderLM
    from fromzero.model.encoder import EncoderModel

    sc = cfg.scratch
    if sc.tokenizer_path:
        tok = Tokenizer.load(sc.tokenizer_path)
    else:
        tok = train_tokenizer(_task_texts(train_examples, kind), sc.tokenizer, show_progress=False)
        print(f"tokenizer: trained {sc.tokenizer.kind} with {tok.vocab_size} tokens on the task's training texts")
    torch.manual_seed(cfg.train.seed)
    if sc.arch == "encoder":
        enc = sc.encoder
        ecfg = build(EncoderConfig, {**to_dict(enc), "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id,
                                     "max_seq_len": max(enc.max_seq_len, cfg.max_len)}, "scratch.encoder")
        return EncoderModel(ecfg), tok
    mcfg = build(ModelConfig, {**to_dict(sc.model), "vocab_size": tok.vocab_size,
                               "max_seq_len": max(sc.model.max_seq_len, cfg.max_len)}, "scratch.model")
    return DecoderLM(mcfg), tok


# ----------------------------------------------------------------------------- task kinds


def _unit(examples: Sequence[Any]) -> str:
    return "char" if all(len(t) == 1 for e in examples[:500] for t in e.tokens) else "word"


def make_kind(kind: str, tok: Any, backbone: nn.Module, max_len: int, labels: Sequence[str], cfg: FinetuneConfig,
              unit: str = "char") -> TaskKind:
    """The TaskKind for `kind`, sized to the backbone's context."""
    ctx = getattr(getattr(backbone, "config", None), "max_seq_len", None)
    if ctx is not None:
        max_len = min(max_len, ctx)
    if cfg.peft.method == "prompt":
        max_len -= cfg.peft.num_virtual_tokens  # soft prompts take context positions
        if max_len < 4:
            raise FromzeroError(f"peft.num_virtual_tokens={cfg.peft.num_virtual_tokens} leaves no context for text "
                                f"(max_seq_len {ctx}); use fewer virtual tokens")
    if cfg.crf and kind != "tagging":
        raise FromzeroError(f"crf: true adds a CRF to a tagging head, but this is a {kind} task; remove crf")
    if kind == "classification":
        return Classification(tok, max_len, labels, framing_for(is_encoder(backbone), tok), cfg.pooling, cfg.dropout,
                              cfg.eval_batch_size)
    if kind == "tagging":
        return Tagging(tok, max_len, labels, framing_for(is_encoder(backbone), tok), unit, cfg.dropout,
                       cfg.eval_batch_size, cfg.crf)
    if kind == "seq2seq":
        return Seq2Seq(tok, max_len, seq2seq_format(backbone, tok, max_len, cfg.eval_batch_size), cfg.max_new_tokens,
                       cfg.eval_batch_size)
    if kind == "chat":
        return Chat(tok, max_len, ChatFormat(tok, cfg.chat_template), cfg.pack, cfg.max_new_tokens, cfg.eval_batch_size)
    raise FromzeroError(f"unknown task kind {kind!r}")


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
    kind_name = task_kind(cfg.task, cfg.data_seed)
    labels = label_names(cfg.task, cfg.data_seed)
    data = {s: load_task_data(cfg.task, s, cfg.data_seed) for s in ("train", "val", "test")}
    data["train"] = _take(data["train"], cfg.max_train_examples)
    data["val"] = _take(data["val"], cfg.max_val_examples)
    data["test"] = _take(data["test"], cfg.max_test_examples)
    if not data["val"]:
        raise FromzeroError(f"task {cfg.task} has an empty validation split; add more examples")

    save_dir = out / "model"
    if cfg.model == "scratch":
        backbone, tok = _scratch_backbone(cfg, data["train"], kind_name)
        base_path = None
    else:
        backbone, tok = load_backbone(cfg.model), Tokenizer.load(cfg.model)
        base_path = Path(cfg.model).resolve()
        if cfg.backbone_dropout is not None:
            backbone = with_dropout(backbone, cfg.backbone_dropout)
    _check_vocab(backbone, tok, cfg.model)
    unit = _unit(data["train"]) if kind_name == "tagging" else "char"
    kind = make_kind(kind_name, tok, backbone, cfg.max_len, labels, cfg, unit)

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
    _save_finetuned(model, kind, tok, meta, save_dir)
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


def _check_vocab(backbone: nn.Module, tok: Tokenizer, where: str) -> None:
    vocab = getattr(getattr(backbone, "config", None), "vocab_size", None)
    if vocab is not None and tok.vocab_size > vocab:
        raise FromzeroError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model only {vocab} "
                            "embeddings; use the tokenizer.json saved with this model")


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


def _head_module(model: nn.Module) -> nn.Module | None:
    inner = model.base_model if isinstance(model, PromptTuningModel) else model
    return getattr(inner, "classifier", None)


def _head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What head.safetensors holds: the classifier's weights, plus "crf.*" for a CRF tagging head."""
    head = _head_module(model)
    state = dict(head.state_dict()) if head is not None else {}
    crf = getattr(model, "crf", None)
    if crf is not None:
        state.update({f"crf.{k}": v for k, v in crf.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _load_head_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    crf = getattr(model, "crf", None)
    crf_state = {k[4:]: v for k, v in state.items() if k.startswith("crf.")}
    if crf_state and crf is None:
        raise RuntimeError("head.safetensors holds CRF weights but the model has no CRF layer")
    _head_module(model).load_state_dict({k: v for k, v in state.items() if not k.startswith("crf.")})
    if crf is not None:
        crf.load_state_dict(crf_state)


def _save_finetuned(model: nn.Module, kind: TaskKind, tok: Tokenizer, meta: dict, directory: Path) -> None:
    """Write the fine-tuned model (or the adapter + head) to `directory`, replacing an older save."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", HEAD_FILE, "adapter.safetensors", "adapter_config.json"):
        (directory / name).unlink(missing_ok=True)
    if meta["adapter"]:
        save_adapter(model, directory)
    else:
        backbone = getattr(model, "backbone", model)
        save_backbone(backbone, directory)
        if _head_module(model) is not None:
            save_file(_head_state(model), str(directory / HEAD_FILE))
    tok.save(directory)
    (directory / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / META
    if not path.is_file():
        raise FromzeroError(f"{model_dir} is not a fine-tuned model folder (no {META}); point to <out_dir>/model of "
                            "a `fromzero finetune` run")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FromzeroError(f"{path} is not valid JSON ({e}); re-run the fine-tuning or restore the file") from None
    if meta.get("format") != FORMAT:
        raise FromzeroError(f"{path} was not written by fromzero fine-tuning (format {meta.get('format')!r})")
    return meta


def load_finetuned(model_dir: str | Path, base_model: str | Path | None = None) -> tuple[nn.Module, TaskKind, dict]:
    """(task model ready for inference, its TaskKind, finetune.json) from a saved folder.

    PEFT folders need their base model: finetune.json's base_model, or `base_model` here.
    """
    from safetensors.torch import load_file

    d = Path(model_dir)
    meta = read_meta(d)
    tok = Tokenizer.load(d)
    if meta["adapter"]:
        base = Path(base_model or meta.get("base_model") or "")
        if not base_model and not meta.get("base_model"):
            raise FromzeroError(f"{d} holds an adapter without a recorded base model; pass base_model=")
        if not (base / "config.json").is_file():
            raise FromzeroError(f"the adapter in {d} needs its base model {base}, which is not there; pass "
                                "base_model= (CLI: --base-model) pointing to the model it was fine-tuned from")
        want = meta.get("base_model_sha256")
        weights = base / "model.safetensors"
        if want and weights.is_file() and file_sha256(weights) != want:
            raise FromzeroError(f"{base} is not the base model this adapter was trained on (its model.safetensors "
                                f"differs from the recorded SHA-256 {want[:12]}...); pass the original base model")
        backbone = load_backbone(base)
    else:
        backbone = load_backbone(d)
    _check_vocab(backbone, tok, str(d))
    cfg = build(FinetuneConfig, {"max_len": meta["max_len"], "pooling": meta["pooling"], "dropout": meta["dropout"],
                                 "crf": meta.get("crf", False),
                                 "pack": meta["pack"], "max_new_tokens": meta["max_new_tokens"],
                                 "chat_template": meta["chat_template"], "peft": meta["peft"]})
    kind = make_kind(meta["kind"], tok, backbone, meta["max_len"], meta["labels"], cfg, meta.get("unit", "char"))
    model = kind.build_model(backbone)
    if meta["adapter"]:
        model = load_adapter(model, d)
    else:
        if kind.head_modules:
            state = load_file(str(d / HEAD_FILE))
            try:
                _load_head_state(model, state)
            except RuntimeError as e:
                raise FromzeroError(f"{d / HEAD_FILE} does not fit this model ({str(e).splitlines()[-1].strip()}); "
                                    "re-save the fine-tuned model") from None
    model.eval()
    return model, kind, meta


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


__all__ = ["FinetuneConfig", "ScratchConfig", "check_task_fits", "class_probabilities", "evaluate_saved",
           "load_backbone", "load_classifiers", "load_finetuned", "make_kind", "peak_rss_mb", "predict", "read_meta",
           "run_finetune", "save_backbone"]
