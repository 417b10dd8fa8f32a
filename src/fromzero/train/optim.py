"""AdamW with the usual two parameter groups, and the warmup + cosine learning-rate schedule.

Weight decay pulls weights toward zero; that regularises matrices but only hurts the gains of
norm layers, biases and embedding rows (an embedding row that is rarely seen would just decay
away). So those get no decay: every 1-D parameter and every nn.Embedding weight.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def _no_decay_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()  # LayerNorm, RMSNorm, GroupNorm, custom norms
        if isinstance(module, nn.Embedding) or is_norm:
            ids.update(id(p) for p in module.parameters(recurse=False))
    for p in model.parameters():
        if p.ndim < 2:  # biases and norm gains
            ids.add(id(p))
    return ids


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[decay group, no-decay group] over the trainable parameters (frozen ones are left out).

    A weight tied between the embedding and the output head is one Parameter: it appears once,
    in the no-decay group, because it is an embedding.
    """
    no_decay = _no_decay_ids(model)
    decay_params, plain_params = [], []
    for _, p in model.named_parameters():  # named_parameters() yields each shared tensor once
        if not p.requires_grad:
            continue
        (plain_params if id(p) in no_decay else decay_params).append(p)
    groups = [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": plain_params, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over `param_groups`, using the fused kernel where available, else the foreach one."""
    groups = param_groups(model, weight_decay)
    if not groups:
        from fromzero.errors import FromzeroError

        raise FromzeroError("the model has no trainable parameters; unfreeze some (requires_grad=True) before training")
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):  # device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


def warmup_cosine(warmup_steps: int, max_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier for 0-based step s: linear ramp to 1 over `warmup_steps`, then a cosine down to
    `min_lr_ratio` at `max_steps`, flat after that."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                    min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `warmup_cosine`; its state (the step count) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, max_steps, min_lr_ratio))
