"""Decoder-only Transformer (GPT-2 and Llama styles), its config, safetensors I/O and HF interop."""

from fromzero.model.config import PRESETS, ModelConfig
from fromzero.model.decoder import DecoderLM
from fromzero.model.io import load_model, save_model
from fromzero.model.layers import KVCache

__all__ = ["PRESETS", "DecoderLM", "KVCache", "ModelConfig", "load_model", "save_model"]
