"""Hugging Face interop, both ways: GPT-2/Llama/Qwen2 decoders, BERT encoders, T5/mT5."""

from fromzero.model.hf.decoder import SUPPORTED, load_hf, save_hf

__all__ = ["SUPPORTED", "load_hf", "save_hf"]
