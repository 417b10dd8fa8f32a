"""Compat shim (remove in 0.3): chat templates and `chat()` live in fromzero.tuning.sft."""

from fromzero.tuning.sft import ChatFormat, ChatTemplate, chat, pack_rows, sft_rows  # compat shim

__all__ = ["ChatFormat", "ChatTemplate", "chat", "pack_rows", "sft_rows"]
