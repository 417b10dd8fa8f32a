"""Several objectives on one model: loss = sum of weight * objective loss.

    objective = Mixture({"mlm": (MaskedLM(), 1.0), "simcse": (SimCSE(), 0.1)})
    batches = MixtureBatches({"mlm": mlm_batches, "simcse": sentence_batches})

Each objective gets its own part of the batch: keys "mlm.input_ids", "mlm.labels", ... go to
"mlm" with the prefix removed (a batch without prefixed keys is shared by all objectives).
Metrics come back prefixed the same way ("mlm.mlm_acc", "simcse.loss", ...), next to the total "loss".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from fromzero.errors import FromzeroError

Objective = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class Mixture:
    def __init__(self, parts: dict[str, tuple[Objective, float]]):
        if not parts:
            raise FromzeroError("a mixture needs at least one objective")
        for name, (_, weight) in parts.items():
            if weight < 0 or "." in name:
                raise FromzeroError(f"mixture part '{name}': weights must be >= 0 and names must not contain '.'")
        self.parts = parts

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        total: torch.Tensor | float = 0.0
        metrics: dict[str, torch.Tensor] = {}
        for name, (objective, weight) in self.parts.items():
            out = objective(model, sub_batch(batch, name))
            out = {"loss": out} if isinstance(out, torch.Tensor) else out
            total = total + weight * out["loss"]
            metrics.update({f"{name}.{k}": v.detach() for k, v in out.items()})
        return {"loss": total, **metrics}


def sub_batch(batch: dict[str, Any], name: str) -> dict[str, Any]:
    """The keys of `batch` that start with "name." (prefix removed), or the whole batch if none do."""
    prefix = name + "."
    mine = {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}
    return mine or batch


class MixtureBatches:
    """Draws one batch from each source per step and merges them with "name." prefixes.

    state_dict/load_state_dict delegate to the sources, so resuming a mixture is as exact as its parts.
    """

    def __init__(self, sources: dict[str, Any]):
        self.sources = sources

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iters = {name: iter(src) for name, src in self.sources.items()}
        while True:
            merged: dict[str, Any] = {}
            for name, it in iters.items():
                merged.update({f"{name}.{k}": v for k, v in next(it).items()})
            yield merged

    def fixed(self, n: int) -> list[dict[str, Any]]:
        """n fixed merged batches (each source's `fixed(n)`), e.g. for validation."""
        parts = {name: src.fixed(n) for name, src in self.sources.items()}
        return [{f"{name}.{k}": v for name, batches in parts.items() for k, v in batches[i].items()}
                for i in range(n)]

    def state_dict(self) -> dict:
        return {name: src.state_dict() for name, src in self.sources.items() if hasattr(src, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for name, src in self.sources.items():
            if name in state and hasattr(src, "load_state_dict"):
                src.load_state_dict(state[name])
