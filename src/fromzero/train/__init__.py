"""Training: one loop (`Trainer`), its config, optimizer/schedule, checkpoints, metrics and plots."""

from fromzero.train.checkpoint import load_checkpoint, save_checkpoint
from fromzero.train.distributed import DistributedContext
from fromzero.train.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine
from fromzero.train.precision import bf16_supported, resolve_precision
from fromzero.train.trainer import TrainConfig, Trainer

__all__ = [
    "DistributedContext",
    "TrainConfig",
    "Trainer",
    "bf16_supported",
    "build_optimizer",
    "build_scheduler",
    "load_checkpoint",
    "param_groups",
    "resolve_precision",
    "save_checkpoint",
    "warmup_cosine",
]
