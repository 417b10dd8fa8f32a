"""fromzero: develop language models from zero and fine-tune them, on one machine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "from_pretrained"]

if TYPE_CHECKING:
    from fromzero.model.auto import from_pretrained


def __getattr__(name: str) -> Any:
    """`fromzero.from_pretrained` is imported on first use, so `import fromzero` (and the CLI) stays
    free of torch until a model is actually needed."""
    if name == "from_pretrained":
        from fromzero.model.auto import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'fromzero' has no attribute {name!r}")
