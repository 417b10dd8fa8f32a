"""Compat shim (remove in 0.3): the fine-tuning recipe lives in fromzero.recipes.finetune."""

from fromzero.recipes.finetune import *  # noqa: F401,F403  # compat shim
from fromzero.recipes.finetune import __all__  # noqa: F401  # compat shim
