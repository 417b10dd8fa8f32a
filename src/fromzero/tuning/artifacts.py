"""A fine-tuned model on disk: `<out_dir>/model/`, written by save_finetuned, read by load_finetuned.

    finetune.json        task, kind, labels, head settings, max_len, PEFT config, base model (+ SHA-256)
    tokenizer.json
    model.safetensors    the whole backbone in its own format (+ config.json), and
    head.safetensors     the task head ("crf.*" too for a CRF tagger); or, with PEFT, instead of both:
    adapter.safetensors + adapter_config.json   adapter weights and the head, on top of `base_model`

An adapter folder needs its base model: finetune.json's base_model (or base_model= here), checked
against the recorded SHA-256 so an adapter is never silently applied to other weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fromzero.config import build
from fromzero.errors import FromzeroError
from fromzero.peft import PeftConfig, load_adapter, save_adapter
from fromzero.peft.prompt import PromptTuningModel
from fromzero.tokenizer import Tokenizer
from fromzero.tuning.backbone import check_vocab, load_backbone, save_backbone
from fromzero.tuning.kinds import TaskKind
from fromzero.tuning.registry import KindSettings, make_kind
from fromzero.tuning.sft import ChatTemplate

META = "finetune.json"
HEAD_FILE = "head.safetensors"
FORMAT = "fromzero-finetuned"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def head_module(model: nn.Module) -> nn.Module | None:
    inner = model.base_model if isinstance(model, PromptTuningModel) else model
    return getattr(inner, "classifier", None)


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What head.safetensors holds: the classifier's weights, plus "crf.*" for a CRF tagging head."""
    head = head_module(model)
    state = dict(head.state_dict()) if head is not None else {}
    crf = getattr(model, "crf", None)
    if crf is not None:
        state.update({f"crf.{k}": v for k, v in crf.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_head_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    crf = getattr(model, "crf", None)
    crf_state = {k[4:]: v for k, v in state.items() if k.startswith("crf.")}
    if crf_state and crf is None:
        raise RuntimeError("head.safetensors holds CRF weights but the model has no CRF layer")
    head_module(model).load_state_dict({k: v for k, v in state.items() if not k.startswith("crf.")})
    if crf is not None:
        crf.load_state_dict(crf_state)


def save_finetuned(model: nn.Module, kind: TaskKind, tok: Tokenizer, meta: dict, directory: Path) -> None:
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
        if head_module(model) is not None:
            save_file(head_state(model), str(directory / HEAD_FILE))
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


def kind_settings(meta: dict[str, Any]) -> KindSettings:
    """The task kind's settings as finetune.json recorded them."""
    peft = build(PeftConfig, meta["peft"], "finetune.json peft")
    return KindSettings(pooling=meta["pooling"], dropout=meta["dropout"], crf=meta.get("crf", False),
                        pack=meta["pack"], max_new_tokens=meta["max_new_tokens"],
                        chat_template=build(ChatTemplate, meta["chat_template"], "finetune.json chat_template"),
                        virtual_tokens=peft.num_virtual_tokens if peft.method == "prompt" else 0)


def _base_of_adapter(d: Path, meta: dict[str, Any], base_model: str | Path | None) -> Path:
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
    return base


def load_finetuned(model_dir: str | Path, base_model: str | Path | None = None) -> tuple[nn.Module, TaskKind, dict]:
    """(task model ready for inference, its TaskKind, finetune.json) from a saved folder.

    PEFT folders need their base model: finetune.json's base_model, or `base_model` here.
    """
    from safetensors.torch import load_file

    d = Path(model_dir)
    meta = read_meta(d)
    tok = Tokenizer.load(d)
    backbone = load_backbone(_base_of_adapter(d, meta, base_model) if meta["adapter"] else d)
    check_vocab(backbone, tok, str(d))
    kind = make_kind(meta["kind"], tok, backbone, meta["max_len"], meta["labels"], kind_settings(meta),
                     meta.get("unit", "char"))
    model = kind.build_model(backbone)
    if meta["adapter"]:
        model = load_adapter(model, d)
    elif kind.head_modules:
        state = load_file(str(d / HEAD_FILE))
        try:
            load_head_state(model, state)
        except RuntimeError as e:
            raise FromzeroError(f"{d / HEAD_FILE} does not fit this model ({str(e).splitlines()[-1].strip()}); "
                                "re-save the fine-tuned model") from None
    model.eval()
    return model, kind, meta


__all__ = ["FORMAT", "HEAD_FILE", "META", "file_sha256", "head_state", "kind_settings", "load_finetuned",
           "load_head_state", "read_meta", "save_finetuned"]
