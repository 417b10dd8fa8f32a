"""The one way to reach the user's module inside wrappers, and to run it in eval mode for a while."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile (`_orig_mod`) and DDP/FSDP (`module`) wrappers.

    `module` is followed only on the distributed wrapper classes: a user's own model may well have a
    submodule called "module".
    """
    from torch.nn.parallel import DistributedDataParallel

    wrappers: tuple[type, ...] = (DistributedDataParallel,)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers += (FullyShardedDataParallel,)
    except ImportError:  # builds without distributed support
        pass
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` for the block, then back to the mode it was in (evaluation inside training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
