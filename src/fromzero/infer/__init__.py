"""Inference: sampling-based generation with a static KV cache and UTF-8-safe streaming."""

from fromzero.infer.generate import GenerationConfig, generate, generate_ids, stream

__all__ = ["GenerationConfig", "generate", "generate_ids", "stream"]
