"""The one PEFT entry point: apply_peft(model, cfg) for every method, plus merge / save / load.

All methods work by module replacement or by adding parameters to existing modules, never by
special cases in a model: METHODS (registry.py) says for each method which of the three it does.
What was applied is recorded on the model as `fromzero_peft`, which is what merge_peft /
save_adapter / load_adapter read.

Target matching (fromzero.modules.targets) fails loudly: a user's list entry that matches nothing,
a match that is not a Linear/Conv1D/Embedding, or a default list that matches nothing all raise a
FromzeroError that lists the model's wrappable layers. The usual Hugging Face names (q_proj,
query, c_attn ...) select fused layers or their slices.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fromzero.config import build, to_dict
from fromzero.errors import FromzeroError
from fromzero.modules.targets import find_saved_modules, find_targets, replace_module
from fromzero.peft.config import PeftConfig
from fromzero.peft.freeze import apply_freeze, freeze_candidates
from fromzero.peft.lora import _Wrapper
from fromzero.peft.prompt import PromptTuningModel
from fromzero.peft.registry import METHODS

ADAPTER_FILE, CONFIG_FILE = "adapter.safetensors", "adapter_config.json"
FORMAT = "fromzero-adapter"


@dataclass
class PeftState:
    """What apply_peft did to a model (stored as `model.fromzero_peft`)."""

    config: PeftConfig
    adapter_names: list[str]  # every parameter apply_peft left trainable: what save_adapter writes
    targets: list[str] = field(default_factory=list)  # modules wrapped (lora / adapter / ia3)


def find_target_modules(model: nn.Module, targets: list[str], strict: bool = True,
                        method: str = "lora") -> list[str]:
    """Names of the layers `targets` select (see fromzero.modules.targets.find_targets)."""
    return [t.name for t in find_targets(model, targets, strict, method)]


# ---------------------------------------------------------------------------------------------
# Public API


def peft_state(model: nn.Module) -> PeftState | None:
    return getattr(model, "fromzero_peft", None)


def apply_peft(model: nn.Module, cfg: PeftConfig) -> nn.Module:
    """Apply `cfg` to `model` in place and return it (for method "prompt": a PromptTuningModel
    wrapping it, so always use the return value). Base weights are frozen for every method
    except "none"; `freeze` then narrows the trainable base weights further. (`layer_lr_decay`
    is for the optimizer: pass it to layerwise_param_groups.)"""
    if peft_state(model) is not None:
        raise FromzeroError(f"this model already has PEFT applied (method {peft_state(model).config.method}); "
                            "apply it to a fresh model, or merge_peft(model, unload=True) first")
    method = METHODS[cfg.method]
    # Resolve every name before changing anything, so a bad config leaves the model untouched.
    targets = []
    if method.wrap is not None:
        targets = find_targets(model, cfg.target_modules, strict=not cfg.uses_default_targets, method=cfg.method,
                               slices=method.slices)
    saved = find_saved_modules(model, cfg.modules_to_save)
    plan = method.prepare(model, cfg) if method.prepare is not None else None
    wrapped = method.outer(model, cfg) if method.outer is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # apply_freeze below repeats the warnings that matter
        candidates = freeze_candidates(model, cfg.freeze, cfg.freeze_bottom_k, _param_ids(model, saved) or None)

    base_ids = {id(p) for p in model.parameters()}
    if method.freezes_base:
        model.requires_grad_(False)
    added: list[nn.Parameter] = []
    for target in targets:
        wrapper = method.wrap(model.get_submodule(target.name), cfg, target.parts)
        replace_module(model, target.name, wrapper)
        added += [p for _, p in wrapper.adapter_parameters()]
    if method.add is not None:
        added += [model.get_parameter(n) for n in method.add(model, cfg, plan)]
    for p in added:
        p.requires_grad_(True)

    saved_ids = _param_ids(model, saved)
    # New parameters never freeze; base ones a method unfreezes (BitFit's biases) still may.
    new_ids = {id(p) for p in added} - base_ids
    apply_freeze(model, cfg.freeze, cfg.freeze_bottom_k, keep_ids=new_ids | saved_ids,
                 head_ids=saved_ids or None)
    params = dict(model.named_parameters())
    for n in candidates:
        if n in params and id(params[n]) in saved_ids and cfg.freeze != "all_but_head":
            warnings.warn(f"freeze: {cfg.freeze} would freeze '{n}', but modules_to_save keeps it trainable "
                          "(directly or through a tied weight)", stacklevel=2)
    for p in model.parameters():
        if id(p) in saved_ids:
            p.requires_grad_(True)

    if wrapped is not None:
        model = wrapped
    model.fromzero_peft = PeftState(
        config=cfg, adapter_names=[n for n, p in model.named_parameters() if p.requires_grad],
        targets=[t.name for t in targets],
    )
    return model


def _param_ids(model: nn.Module, module_names: list[str]) -> set[int]:
    return {id(p) for n in module_names for p in model.get_submodule(n).parameters()}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied tensor counts once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _require_state(model: nn.Module, what: str) -> PeftState:
    state = peft_state(model)
    if state is None:
        raise FromzeroError(f"{what} needs a model with PEFT applied; call fromzero.peft.apply_peft(model, cfg) first")
    return state


def _mergeable(model: nn.Module, state: PeftState, what: str) -> list[nn.Module]:
    if not METHODS[state.config.method].mergeable:
        raise FromzeroError(f"{state.config.method} tuning adds computation that cannot be folded into the weights, "
                            f"so it cannot be {what}; keep the wrapped model, or save it with save_adapter")
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, _Wrapper) and hasattr(m, "merge")]
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{name}.{pname}" if name else pname)
    for name, m in wrappers:
        users = owners.get(id(m.base_layer.weight), [])
        if len(users) > 1:
            other = next(u for u in users if not u.startswith(f"{name}."))
            raise FromzeroError(f"cannot fold {state.config.method} on '{name}' into its weight: the weight is tied to "
                                f"'{other}', which would change too; leave tied layers out of target_modules")
    return [m for _, m in wrappers]


def merge_peft(model: nn.Module, unload: bool = False) -> nn.Module:
    """Fold LoRA / IA3 into the base weights, so inference costs nothing extra. The outputs do not
    change. With unload=True the wrappers are also removed and the model is a plain model again
    (original parameter names, ready for save_model / Hugging Face export). BitFit and freezing
    change base weights directly, so there is nothing to merge for them."""
    state = _require_state(model, "merge_peft")
    for m in _mergeable(model, state, "merged"):
        m.merge()
    if unload:
        for name in list(state.targets):
            replace_module(model, name, model.get_submodule(name).base_layer)
        del model.fromzero_peft
    return model


def unmerge_peft(model: nn.Module) -> nn.Module:
    """Undo merge_peft (before an unload): base weights back to their values, adapter path back on."""
    state = _require_state(model, "unmerge_peft")
    for m in _mergeable(model, state, "unmerged"):
        m.unmerge()
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors save_adapter writes: everything apply_peft made trainable."""
    state = _require_state(model, "save_adapter")
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in state.adapter_names}


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write adapter.safetensors (adapter + modules_to_save weights only) and adapter_config.json."""
    state = _require_state(model, "save_adapter")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.contiguous().cpu() for n, t in adapter_state_dict(model).items()}
    base = model.base_model if isinstance(model, PromptTuningModel) else model
    base_n = sum(p.numel() for p in model.parameters()) - sum(t.numel() for t in tensors.values())
    meta = {
        "format": FORMAT,
        "version": 1,
        "peft": to_dict(state.config),
        "base_model": {"class": type(base).__name__, "num_params": base_n},
    }
    # Write to temporary names and rename, so a killed save never leaves half a file behind.
    tmp_w, tmp_c = out / f".{ADAPTER_FILE}.tmp", out / f".{CONFIG_FILE}.tmp"
    save_file(tensors, str(tmp_w), metadata={"format": FORMAT})
    tmp_c.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_w, out / ADAPTER_FILE)
    os.replace(tmp_c, out / CONFIG_FILE)
    return out


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the saved config to `model` and load the adapter weights; returns the model (a new
    wrapper for prompt tuning). A model that already has the same PEFT config applied just gets
    the weights. An adapter from a different base model fails with the tensor and both shapes."""
    d = Path(directory)
    cfg_path, w_path = d / CONFIG_FILE, d / ADAPTER_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise FromzeroError(f"{d} is not a fromzero adapter directory: it needs {CONFIG_FILE} and {ADAPTER_FILE} "
                            "(written by save_adapter)")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FromzeroError(f"{cfg_path} is not valid JSON ({e}); re-save the adapter") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FromzeroError(f"{cfg_path} was not written by fromzero's save_adapter (no format: {FORMAT}); "
                            "Hugging Face peft adapters are not supported here")
    cfg = build(PeftConfig, meta.get("peft"), "peft")
    saved_from = meta.get("base_model", {}).get("class", "?")

    state = peft_state(model)
    if state is None:
        model = apply_peft(model, cfg)
        state = _require_state(model, "load_adapter")
    elif state.config != cfg:
        raise FromzeroError(f"the model already has a different PEFT config applied (method {state.config.method}); "
                            f"load the adapter onto a fresh base model")
    try:
        tensors = load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise FromzeroError(f"cannot read {w_path}: {e}; the file is damaged, re-save the adapter") from None

    params = dict(model.named_parameters())
    here = type(model.base_model if isinstance(model, PromptTuningModel) else model).__name__
    for name, t in tensors.items():
        if name not in params:
            raise FromzeroError(f"adapter tensor '{name}' has no matching parameter in this {here}: the adapter was "
                                f"trained on a different base model ({saved_from}); load it onto that model")
        if params[name].shape != t.shape:
            raise FromzeroError(f"adapter tensor '{name}' has shape {_shape(t)} but this model's parameter has shape "
                                f"{_shape(params[name])}: the adapter was trained on a different base model "
                                f"({saved_from}); load it onto the base it was trained from")
    missing = [n for n in state.adapter_names if n not in tensors]
    if missing:
        raise FromzeroError(f"{w_path} lacks {len(missing)} adapter tensor(s), e.g. '{missing[0]}'; "
                            "the file does not belong to this config, re-save the adapter")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    base_n = sum(p.numel() for p in params.values()) - sum(t.numel() for t in tensors.values())
    if saved_from != here or meta.get("base_model", {}).get("num_params", base_n) != base_n:
        warnings.warn(f"adapter was saved from a {saved_from} with {meta['base_model'].get('num_params')} base "
                      f"parameters, this is a {here} with {base_n}; the shapes fit, but check it is the same base",
                      stacklevel=2)
    return model
