"""LoRA: y = W x + (alpha / r) * B A x, with W frozen and only the low-rank A, B trained.

The wrappers replace a layer in place and keep it as `base_layer`, so they work on any model
family. A is Kaiming-uniform and B is zero (the same init as Hugging Face peft), so a freshly
wrapped model computes exactly what the base model did; merging adds B A into W. LoRAParts adapts
chosen output slices of a fused layer (q and v of a fused qkv) as peft adapts separate q_proj and
v_proj layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.modules.targets import linear_dims


def adapter_dtype(dtype: torch.dtype) -> torch.dtype:
    """Trainable adapter weights stay fp32 next to a bf16/fp16 base (as peft does): AdamW updates
    on tiny adapter tensors are lost to rounding in 16-bit, and fp32 costs almost nothing here."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Wrapper(nn.Module):
    """Shared by every PEFT wrapper: holds the base layer and reads through to its tensors.

    `weight`/`bias` read-through matters because some model code reads `self.proj.weight.dtype`.
    """

    base_layer: nn.Module

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters this wrapper adds (everything not under base_layer)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("base_layer.")]


class _LoRA(_Wrapper):
    """Merge/unmerge shared by the LoRA wrappers: each defines delta_weight() in its base's layout."""

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


class LoRALinear(_LoRA):
    """LoRA around an nn.Linear or a transformers Conv1D."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        dims = linear_dims(base)
        assert dims is not None, f"LoRALinear wraps Linear/Conv1D, got {type(base).__name__}"
        in_f, out_f, self.transposed = dims
        w = base.weight
        self.base_layer = base
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dt = adapter_dtype(w.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, in_f, dtype=dt, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, dtype=dt, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        h = self.lora_dropout(x).to(self.lora_A.dtype)
        return y + (F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling).to(y.dtype)

    def delta_weight(self) -> Tensor:
        """B A * scaling in the base weight's layout."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta.t() if self.transposed else delta


class LoRAEmbedding(_LoRA):
    """LoRA around an nn.Embedding: the low-rank update is looked up, not multiplied.

    Here A starts at zero and B is random (as in peft): A is the part indexed by token id.
    """

    def __init__(self, base: nn.Embedding, r: int, alpha: float):
        super().__init__()
        w = base.weight
        self.base_layer = base
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        dt = adapter_dtype(w.dtype)
        self.lora_A = nn.Parameter(torch.zeros(r, base.num_embeddings, dtype=dt, device=w.device))
        self.lora_B = nn.Parameter(torch.empty(base.embedding_dim, r, dtype=dt, device=w.device))
        nn.init.normal_(self.lora_B)
        self.merged = False

    def forward(self, ids: Tensor) -> Tensor:
        y = self.base_layer(ids)
        if self.merged:
            return y
        b = self.base_layer
        h = F.embedding(ids, self.lora_A.t(), b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)
        delta = h @ self.lora_B.t() * self.scaling
        embed_scale = getattr(b, "embed_scale", None)  # scaled embeddings (Gemma) scale the update too
        if embed_scale is not None:
            delta = delta * embed_scale
        return y + delta.to(y.dtype)

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A).t() * self.scaling  # [num_embeddings, dim]


class LoRAParts(_LoRA):
    """LoRA on some output slices of a fused Linear: part p (rows s:e of the output) has its own
    A_p [r, in] and B_p [e - s, r], and B_p A_p x adds to those rows only. The parts' B matrices are
    laid into one block matrix [out, parts * r] per call, so the forward is two matmuls whatever
    the number of parts, and merging adds that block matrix times the stacked A into W."""

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]], r: int, alpha: float,
                 dropout: float = 0.0):
        super().__init__()
        dims = linear_dims(base)
        assert dims is not None, f"LoRAParts wraps Linear/Conv1D, got {type(base).__name__}"
        in_f, self.out_features, self.transposed = dims
        w = base.weight
        self.base_layer = base
        self.parts = dict(parts)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dt = adapter_dtype(w.dtype)
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(r, in_f, dtype=dt, device=w.device))
                                        for p in self.parts})
        self.lora_B = nn.ParameterDict({p: nn.Parameter(torch.zeros(e - s, r, dtype=dt, device=w.device))
                                        for p, (s, e) in self.parts.items()})
        for a in self.lora_A.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.merged = False

    def _stacked(self) -> tuple[Tensor, Tensor]:
        """(A of every part stacked [parts * r, in], the block matrix of the B's [out, parts * r])."""
        a = torch.cat([self.lora_A[p] for p in self.parts])
        b = a.new_zeros(self.out_features, a.shape[0])
        for i, (p, (s, e)) in enumerate(self.parts.items()):
            b[s:e, i * self.r:(i + 1) * self.r] = self.lora_B[p]
        return a, b

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        a, b = self._stacked()
        h = self.lora_dropout(x).to(a.dtype)
        return y + (F.linear(F.linear(h, a), b) * self.scaling).to(y.dtype)

    def delta_weight(self) -> Tensor:
        a, b = self._stacked()
        delta = (b @ a) * self.scaling
        return delta.t() if self.transposed else delta

    def extra_repr(self) -> str:
        return f"parts={','.join(self.parts)}, {super().extra_repr()}"


def lora_wrap(module: nn.Module, r: int, alpha: float, dropout: float,
              parts: dict[str, tuple[int, int]] | None = None) -> _Wrapper:
    """The LoRA wrapper for `module`: on the output rows in `parts` only, when given (a fused layer)."""
    if parts:
        return LoRAParts(module, parts, r, alpha, dropout)
    if isinstance(module, nn.Embedding):
        return LoRAEmbedding(module, r, alpha)
    return LoRALinear(module, r, alpha, dropout)
