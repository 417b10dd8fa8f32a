"""METHODS: every fine-tuning method by name, and how apply_peft applies it.

A method comes in one of three shapes, one field each:
  wrap  - it wraps each layer `target_modules` selects (LoRA, adapters, IA3);
  add   - it adds or unfreezes parameters inside the model (prefix tuning, BitFit);
  outer - it wraps the whole model (prompt tuning).
`prepare` runs before anything changes, so a model a method cannot take is left untouched and
the error says what it lacks. Adding a method is one entry here plus its module.

Families: LoRA, adapters, IA3 and prefix tuning work on fromzero's decoders (GPT-2 and Llama
style), the BERT-style encoder and T5; prompt tuning needs a model that takes embeddings (the
decoders, and the encoder under a task head), so not T5; BitFit needs biases, so not Llama or T5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from fromzero.peft.adapter import AdapterLayer
from fromzero.peft.bitfit import bias_parameter_names
from fromzero.peft.ia3 import IA3Layer
from fromzero.peft.lora import _Wrapper, lora_wrap
from fromzero.peft.prompt import PromptTuningModel, add_prefix_parameters, prefix_attention_modules

PeftConfig = Any  # fromzero.peft.config.PeftConfig, which imports this table to check method names


@dataclass(frozen=True)
class PeftMethod:
    summary: str
    wrap: Callable[[nn.Module, PeftConfig, dict[str, tuple[int, int]]], _Wrapper] | None = None
    slices: bool = False  # wrap can adapt single slices of a fused layer (q of a fused qkv)
    prepare: Callable[[nn.Module, PeftConfig], Any] | None = None  # checks; its result goes to add
    add: Callable[[nn.Module, PeftConfig, Any], list[str]] | None = None  # returns parameter names to train
    outer: Callable[[nn.Module, PeftConfig], nn.Module] | None = None
    mergeable: bool = True  # merge_peft can fold it into the weights (or there is nothing to fold)
    freezes_base: bool = True


def _prefix(model: nn.Module, cfg: PeftConfig, _: Any) -> list[str]:
    return add_prefix_parameters(model, cfg.num_virtual_tokens)


def _biases(model: nn.Module, cfg: PeftConfig, names: list[str]) -> list[str]:
    return names


METHODS: dict[str, PeftMethod] = {
    "none": PeftMethod("full or partial fine-tuning: every base weight trains unless `freeze` says otherwise",
                       freezes_base=False),
    "lora": PeftMethod("low-rank updates B A beside the target layers (Hu et al. 2021)",
                       wrap=lambda m, cfg, parts: lora_wrap(m, cfg.r, cfg.alpha, cfg.dropout, parts), slices=True),
    "adapter": PeftMethod("bottleneck MLPs after the target layers (Houlsby et al. 2019)",
                          wrap=lambda m, cfg, parts: AdapterLayer(m, cfg.adapter_size, cfg.dropout), mergeable=False),
    "ia3": PeftMethod("one learned scale per output feature of the target layers (Liu et al. 2022)",
                      wrap=lambda m, cfg, parts: IA3Layer(m)),
    "prefix": PeftMethod("learned keys/values in front of every attention layer's own (Li & Liang 2021)",
                         prepare=lambda m, cfg: prefix_attention_modules(m), add=_prefix, mergeable=False),
    "prompt": PeftMethod("learned input vectors in front of every sequence (Lester et al. 2021)",
                         outer=lambda m, cfg: PromptTuningModel(m, cfg.num_virtual_tokens), mergeable=False),
    "bitfit": PeftMethod("only the bias terms train (Ben Zaken et al. 2021)",
                         prepare=lambda m, cfg: bias_parameter_names(m), add=_biases),
}
