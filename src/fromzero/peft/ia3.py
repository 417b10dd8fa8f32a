"""IA3: one learned scale per output feature of a layer, y = l * (W x + b), l initialised to ones.

The fewest parameters of any method here (one vector per target) and, because the scale is
linear, it folds into the weights: merging multiplies W's output rows (and b) by l.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fromzero.errors import FromzeroError
from fromzero.modules.targets import linear_dims
from fromzero.peft.lora import _Wrapper, adapter_dtype


class IA3Layer(_Wrapper):
    """Scales the output features of a Linear, Conv1D or Embedding."""

    def __init__(self, base: nn.Module):
        super().__init__()
        dims = linear_dims(base)
        if dims is not None:
            out_f, self.out_dim = dims[1], (1 if dims[2] else 0)  # weight axis holding output features
        else:
            assert isinstance(base, nn.Embedding), f"IA3 wraps Linear/Conv1D/Embedding, got {type(base).__name__}"
            out_f, self.out_dim = base.embedding_dim, 1
        w = base.weight
        self.base_layer = base
        self.ia3_l = nn.Parameter(torch.ones(out_f, dtype=adapter_dtype(w.dtype), device=w.device))
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        return y if self.merged else y * self.ia3_l.to(y.dtype)

    @torch.no_grad()
    def _scale_base(self, s: Tensor) -> None:
        w = self.base_layer.weight
        w *= (s.view(-1, 1) if self.out_dim == 0 else s.view(1, -1)).to(w.dtype)
        b = getattr(self.base_layer, "bias", None)
        if isinstance(b, Tensor):
            b *= s.to(b.dtype)

    def merge(self) -> None:
        if not self.merged:
            self._scale_base(self.ia3_l)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            if (self.ia3_l == 0).any():
                raise FromzeroError("cannot unmerge IA3: a learned scale is exactly 0, so the original weights are lost; "
                                    "reload the base model and the adapter instead")
            self._scale_base(1.0 / self.ia3_l)
            self.merged = False

    def extra_repr(self) -> str:
        return f"features={self.ia3_l.numel()}, merged={self.merged}"
