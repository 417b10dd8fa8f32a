"""fromzero: develop language models from zero and fine-tune them, on one machine."""

__version__ = "0.1.0"
