"""Partial fine-tuning: which base parameters to freeze, and layer-wise learning-rate decay.

Everything works from generic structure, never from a model family's names:
  * the layer stack is the nn.ModuleList holding the most parameters (blocks / h / layers ...);
  * embeddings are the nn.Embedding modules outside that stack;
  * every parameter is put in a zone: -1 = below the stack (embeddings, embedding norms),
    0..n-1 = its layer, n = above the stack (final norm, head).
Lower layers hold more general features, so they are frozen first / trained with smaller steps.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from fromzero.errors import FromzeroError

HEAD_NAMES = ("lm_head", "head", "classifier", "score", "cls", "qa_outputs", "output")


def find_layer_stack(model: nn.Module) -> tuple[str, int]:
    """(name, length) of the nn.ModuleList with the most parameters."""
    best: tuple[str, int, int] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            n = sum(p.numel() for p in m.parameters())
            if n > 0 and (best is None or n > best[2]):
                best = (name, len(m), n)
    if best is None:
        raise FromzeroError(f"could not find the layer stack of {type(model).__name__} (an nn.ModuleList of "
                            "blocks); freeze: bottom and layer_lr_decay need one, use freeze: embeddings or all_but_head")
    return best[0], best[1]


def param_zones(model: nn.Module) -> tuple[dict[str, int], int]:
    """Zone of every parameter (see the module docstring) and the number of layers."""
    stack, n_layers = find_layer_stack(model)
    prefix = f"{stack}."
    emb_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    zones: dict[str, int] = {}
    past_stack = False
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            zones[name] = int(name[len(prefix):].split(".", 1)[0])
            past_stack = True
        elif id(p) in emb_ids or not past_stack:
            zones[name] = -1
        else:
            zones[name] = n_layers
    return zones, n_layers


def embedding_parameter_names(model: nn.Module) -> list[str]:
    """Parameters of the nn.Embedding modules outside the layer stack (all of them if there is no stack)."""
    try:
        stack = find_layer_stack(model)[0] + "."
    except FromzeroError:
        stack = None
    emb_ids = {id(p) for n, m in model.named_modules() if isinstance(m, nn.Embedding)
               and not (stack and n.startswith(stack)) for p in m.parameters(recurse=False)}
    return [n for n, p in model.named_parameters() if id(p) in emb_ids]


def head_parameter_ids(model: nn.Module) -> set[int]:
    """The output head: `get_output_embeddings()` if the model has one, else a top-level child
    with a conventional head name (lm_head, classifier, score ...)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        head = next((m for n, m in model.named_children() if n in HEAD_NAMES), None)
    if head is None:
        raise FromzeroError(f"freeze: all_but_head could not tell which module of {type(model).__name__} is the "
                            "head; name it in peft.modules_to_save (e.g. [classifier])")
    return {id(p) for p in head.parameters()}


def freeze_candidates(model: nn.Module, kind: str, bottom_k: int = 0, head_ids: set[int] | None = None) -> list[str]:
    """Names of the parameters strategy `kind` freezes (`head_ids`: what all_but_head keeps)."""
    if kind == "none":
        return []
    if kind == "embeddings":
        return embedding_parameter_names(model)
    if kind == "bottom":
        zones, n_layers = param_zones(model)
        if bottom_k > n_layers:
            raise FromzeroError(f"freeze_bottom_k={bottom_k} but the model has only {n_layers} layers; "
                                f"pick 1..{n_layers}")
        return [n for n, z in zones.items() if z < bottom_k]
    if kind == "all_but_head":
        keep = head_ids if head_ids else head_parameter_ids(model)
        emb = set(embedding_parameter_names(model))
        tied = [n for n, p in model.named_parameters() if id(p) in keep and n in emb]
        if tied:
            warnings.warn(f"the head is tied to '{tied[0]}', so freeze: all_but_head also trains the input embedding",
                          stacklevel=3)
        return [n for n, p in model.named_parameters() if id(p) not in keep]
    raise FromzeroError(f"unknown freeze strategy {kind!r}; use none, embeddings, bottom or all_but_head")


def apply_freeze(model: nn.Module, kind: str, bottom_k: int = 0, keep_ids: set[int] | None = None,
                 head_ids: set[int] | None = None) -> list[str]:
    """Freeze what strategy `kind` selects, except parameters whose id is in `keep_ids`
    (adapter weights, modules_to_save); returns the names actually frozen."""
    keep_ids = keep_ids or set()
    params = dict(model.named_parameters())
    frozen = []
    for name in freeze_candidates(model, kind, bottom_k, head_ids):
        if id(params[name]) not in keep_ids:
            params[name].requires_grad_(False)
            frozen.append(name)
    return frozen


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """LR multiplier per parameter name: decay^(n_layers - layer) for layer 0..n-1, decay^(n+1) for
    the embeddings (lowest) and 1 for everything above the stack (head, final norm)."""
    zones, n = param_zones(model)
    return {name: decay ** (n - z) for name, z in zones.items()}


def layerwise_param_groups(model: nn.Module, lr: float, decay: float,
                           groups: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Split optimizer param groups by layer-wise LR scale, setting each group's `lr` (= lr * scale).

    `groups` are existing groups to split (e.g. the trainer's decay/no-decay groups, whose other
    keys are kept); by default one group of all trainable parameters. Each output group also has
    `lr_scale`, so LambdaLR-style schedules (which scale each group's initial lr) keep the ratios.
    """
    if groups is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    names = {id(p): n for n, p in model.named_parameters()}
    scales = layer_lr_scales(model, decay) if decay != 1.0 else {}
    out: list[dict[str, Any]] = []
    for group in groups:
        by_scale: dict[float, list] = {}
        for p in group["params"]:
            by_scale.setdefault(scales.get(names.get(id(p), ""), 1.0), []).append(p)
        for scale in sorted(by_scale):
            out.append({**group, "params": by_scale[scale], "lr": lr * scale, "lr_scale": scale})
    return out
