"""Parameter-efficient and partial fine-tuning: one config key (`method`) picks the method.

    from fromzero.peft import PeftConfig, apply_peft, trainable_parameters, save_adapter
    model = apply_peft(model, PeftConfig(method="lora", r=8, target_modules=["attn.qkv"]))
"""

from fromzero.modules.targets import describe_layers
from fromzero.peft.adapter import AdapterLayer
from fromzero.peft.api import (
    PeftState,
    adapter_state_dict,
    apply_peft,
    find_target_modules,
    load_adapter,
    merge_peft,
    peft_state,
    save_adapter,
    trainable_parameters,
    unmerge_peft,
)
from fromzero.peft.config import DEFAULT_TARGET_MODULES, PeftConfig
from fromzero.peft.freeze import apply_freeze, find_layer_stack, layer_lr_scales, layerwise_param_groups
from fromzero.peft.ia3 import IA3Layer
from fromzero.peft.lora import LoRAEmbedding, LoRALinear, LoRAParts
from fromzero.peft.prompt import PromptTuningModel
from fromzero.peft.registry import METHODS, PeftMethod

__all__ = [
    "METHODS", "AdapterLayer", "DEFAULT_TARGET_MODULES", "IA3Layer", "LoRAEmbedding", "LoRALinear", "LoRAParts",
    "PeftConfig", "PeftMethod", "PeftState",
    "PromptTuningModel", "adapter_state_dict", "apply_freeze", "apply_peft", "describe_layers", "find_layer_stack",
    "find_target_modules", "layer_lr_scales", "layerwise_param_groups", "load_adapter", "merge_peft", "peft_state",
    "save_adapter", "trainable_parameters", "unmerge_peft",
]
