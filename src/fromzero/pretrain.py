"""Compat shim (remove in 0.3): the pretraining recipes live in fromzero.recipes.pretrain."""

from fromzero.recipes.pretrain import PretrainConfig, run_pretrain, run_recipe  # compat shim

__all__ = ["PretrainConfig", "run_pretrain", "run_recipe"]
