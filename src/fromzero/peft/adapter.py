"""Bottleneck adapters (Houlsby et al. 2019): y' = y + up(gelu(down(y))) after a wrapped layer.

Wrapping the layer (rather than editing the model's block code) is what makes this generic: put
adapters after the attention output projection and the MLP output projection (e.g.
target_modules: [attn.proj, mlp.down]) for the paper's placement. `up` starts at zero, so the
wrapped model initially computes exactly what the base model did. Not mergeable (nonlinear).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.modules.targets import linear_dims
from fromzero.peft.lora import _Wrapper, adapter_dtype


class AdapterLayer(_Wrapper):
    def __init__(self, base: nn.Module, size: int, dropout: float = 0.0):
        super().__init__()
        dims = linear_dims(base)
        if dims is not None:
            features = dims[1]
        else:
            assert isinstance(base, nn.Embedding), f"adapters wrap Linear/Conv1D/Embedding, got {type(base).__name__}"
            features = base.embedding_dim
        w = base.weight
        self.base_layer = base
        self.adapter_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dt = adapter_dtype(w.dtype)
        self.adapter_down = nn.Linear(features, size, dtype=dt, device=w.device)
        self.adapter_up = nn.Linear(size, features, dtype=dt, device=w.device)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, *args, **kwargs) -> Tensor:
        y = self.base_layer(*args, **kwargs)
        h = self.adapter_dropout(y).to(self.adapter_down.weight.dtype)
        return y + self.adapter_up(F.gelu(self.adapter_down(h))).to(y.dtype)

    def extra_repr(self) -> str:
        return f"bottleneck={self.adapter_down.out_features}"
