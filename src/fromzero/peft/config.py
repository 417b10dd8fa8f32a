"""PeftConfig: one dataclass, one key (`method`) picks the fine-tuning method.

`freeze` is independent of `method`: it only ever narrows which *base* parameters train
(adapter parameters and `modules_to_save` are never frozen by it), so `method: none` plus a
freeze strategy gives classic partial fine-tuning, and e.g. `bitfit` plus `freeze: bottom`
trains only the biases of the upper layers.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from fromzero.errors import FromzeroError
from fromzero.peft.registry import METHODS

Freeze = Literal["none", "embeddings", "bottom", "all_but_head"]

# Attention projections under the names the common families use: fromzero's DecoderLM
# (attn.qkv / attn.proj), GPT-2 (c_attn / attn.c_proj), Llama/Mistral/Qwen (q/k/v/o_proj),
# BERT (query/key/value), GPT-NeoX/Falcon/Bloom (query_key_value), T5 (q/k/v/o).
# With this default list some names will not exist in a given model; that is fine as long as
# at least one does. A list the user writes must have every entry match (typos fail loudly).
DEFAULT_TARGET_MODULES: list[str] = [
    "attn.qkv", "attn.proj",
    "c_attn", "attn.c_proj",
    "q_proj", "k_proj", "v_proj", "o_proj",
    "query", "key", "value", "query_key_value",
    "q", "k", "v", "o",
]


@dataclass
class PeftConfig:
    method: str = "none"  # a name in fromzero.peft.registry.METHODS
    r: int = 8  # LoRA rank
    alpha: float = 16  # LoRA scaling is alpha / r
    dropout: float = 0.0  # LoRA: on the input of the A path; adapter: on the bottleneck input
    # Entries are name suffixes ("c_attn" matches "transformer.h.0.attn.c_attn"), or full-name
    # regexes when they contain a regex character (e.g. r"blocks\.[0-3]\.attn\.qkv").
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    modules_to_save: list[str] = field(default_factory=list)  # kept fully trainable, e.g. a task head
    adapter_size: int = 64  # bottleneck width of Houlsby adapters
    num_virtual_tokens: int = 16  # prompt / prefix length
    freeze: Freeze = "none"
    freeze_bottom_k: int = 0  # with freeze: bottom, embeddings + the first k layers are frozen
    layer_lr_decay: float = 1.0  # 1.0 = off; else lr * decay^(n_layers - layer) per layer

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise FromzeroError(f"invalid peft config: {msg}")

        close = difflib.get_close_matches(str(self.method), METHODS, n=1)
        need(self.method in METHODS, f"unknown method {self.method!r}"
             + (f" (did you mean {close[0]!r}?)" if close else "") + f"; methods: {', '.join(METHODS)}")
        need(self.freeze in ("none", "embeddings", "bottom", "all_but_head"),
             f"freeze must be one of none, embeddings, bottom, all_but_head; got {self.freeze!r}")
        need(self.r >= 1, f"r must be >= 1, got {self.r}")
        need(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.adapter_size >= 1, f"adapter_size must be >= 1, got {self.adapter_size}")
        need(self.num_virtual_tokens >= 1, f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        need(0.0 < self.layer_lr_decay <= 1.0, f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        need(self.freeze_bottom_k >= 0, f"freeze_bottom_k must be >= 0, got {self.freeze_bottom_k}")
        need(self.freeze != "bottom" or self.freeze_bottom_k >= 1,
             "freeze: bottom needs freeze_bottom_k >= 1 (how many of the lowest layers to freeze)")
        need(self.freeze == "bottom" or self.freeze_bottom_k == 0,
             f"freeze_bottom_k={self.freeze_bottom_k} only takes effect with freeze: bottom (set it, or drop freeze_bottom_k)")
        need(len(self.target_modules) > 0 or self.method not in METHODS or METHODS[self.method].wrap is None,
             f"method {self.method} needs target_modules (e.g. [q_proj, v_proj]); leave the key out for the default list")

    @property
    def uses_default_targets(self) -> bool:
        return list(self.target_modules) == DEFAULT_TARGET_MODULES
