"""ModelConfig: every knob of the decoder in one validated dataclass, plus named presets.

Two families share one implementation:
  gpt2  - learned positions, LayerNorm, GELU MLP, biases
  llama - RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases
Fields left as None get the family's default through the read-only properties below (not by
rewriting the field), so `dataclasses.replace(cfg, arch=...)` never keeps a stale derived value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from fromzero.errors import FromzeroError


@dataclass
class ModelConfig:
    arch: Literal["gpt2", "llama"] = "gpt2"
    vocab_size: int = 8192
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None  # None = n_head (plain multi-head attention)
    d_model: int = 384
    d_ff: int | None = None  # None = 4*d (gpt2) or ~8/3*d rounded up to a multiple of 64 (llama)
    max_seq_len: int = 256
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    bias: bool | None = None  # None = True for gpt2, False for llama
    qkv_bias: bool | None = None  # None = same as bias (Qwen2 has qkv biases but no others)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise FromzeroError(f"invalid model config: {msg}")

        need(self.arch in ("gpt2", "llama"), f"arch must be 'gpt2' or 'llama', got {self.arch!r}")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            need(int(getattr(self, name)) > 0, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.d_model % self.n_head == 0,
             f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}); e.g. d_model={self.n_head * 64}")
        kv = self.kv_heads
        need(0 < kv <= self.n_head and self.n_head % kv == 0,
             f"n_head ({self.n_head}) must be a multiple of n_kv_head ({kv}); pick n_kv_head from the divisors of n_head")
        need(self.d_ff is None or self.d_ff > 0, f"d_ff must be positive, got {self.d_ff}")
        need(self.arch != "llama" or self.head_dim % 2 == 0,
             f"RoPE needs an even head size, got d_model/n_head = {self.head_dim}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm_eps > 0, f"norm_eps must be positive, got {self.norm_eps}")
        need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")

    # Derived values (defaults that depend on arch).
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.arch == "gpt2":
            return 4 * self.d_model
        return -(-(8 * self.d_model) // (3 * 64)) * 64  # SwiGLU keeps ~the param count of a 4*d MLP

    @property
    def has_bias(self) -> bool:
        return self.arch == "gpt2" if self.bias is None else self.bias

    @property
    def has_qkv_bias(self) -> bool:
        return self.has_bias if self.qkv_bias is None else self.qkv_bias

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """`ModelConfig.from_preset("llama-mini", vocab_size=tok.vocab_size)`."""
        if name not in PRESETS:
            raise FromzeroError(f"unknown model preset '{name}'; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# vocab_size is normally taken from the tokenizer, so presets leave it at the default.
PRESETS: dict[str, dict[str, Any]] = {
    # seconds-scale models for tests and demos
    "gpt-tiny": dict(arch="gpt2", n_layer=4, n_head=4, d_model=256, max_seq_len=128),
    "llama-tiny": dict(arch="llama", n_layer=4, n_head=4, n_kv_head=2, d_model=256, max_seq_len=128),
    # ~10M non-embedding params: the benchmark size, trains on a laptop CPU
    "gpt-mini": dict(arch="gpt2", n_layer=6, n_head=6, d_model=384, max_seq_len=256),
    "llama-mini": dict(arch="llama", n_layer=6, n_head=6, n_kv_head=2, d_model=384, max_seq_len=256),
    # GPT-2 small shape (124M with a 50k vocab)
    "gpt-small": dict(arch="gpt2", n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    "llama-small": dict(arch="llama", n_layer=12, n_head=12, n_kv_head=4, d_model=768, max_seq_len=1024),
}
