"""Model families (decoder, encoder, encoder-decoder), their configs, folder I/O and HF interop."""

from fromzero.model.auto import from_pretrained, load_model
from fromzero.model.config import PRESETS, ModelConfig
from fromzero.model.decoder import DecoderLM, save_model
from fromzero.model.layers import KVCache

__all__ = ["PRESETS", "DecoderLM", "KVCache", "ModelConfig", "from_pretrained", "load_model", "save_model"]
