"""Data-parallel training under `torchrun`: who am I, set up the process group, wrap the model.

`torchrun --nproc_per_node=N` sets RANK / LOCAL_RANK / WORLD_SIZE in the environment. With one process
nothing here does anything, so the same training code runs on a laptop and on a multi-GPU server.
Every rank runs the same loop on its own part of each batch; DDP averages the gradients, so the
parameters stay identical; only rank 0 prints, logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fromzero.errors import FromzeroError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> DistributedContext:
        def read(name: str, default: int) -> int:
            raw = os.environ.get(name, "")
            try:
                return int(raw) if raw else default
            except ValueError:
                raise FromzeroError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None

        world = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        return cls(rank=rank, local_rank=read("LOCAL_RANK", rank), world_size=world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        """One GPU per process when there are GPUs, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return torch.device("cpu")


def init_distributed(ctx: DistributedContext | None = None) -> bool:
    """Join the process group when launched with WORLD_SIZE>1; returns True if this call created it.

    nccl on CUDA, gloo on CPU. Rendezvous uses torchrun's MASTER_ADDR / MASTER_PORT (env://).
    """
    ctx = ctx or DistributedContext.from_env()
    if not ctx.enabled or dist.is_initialized():
        return False
    if not dist.is_available():
        raise FromzeroError("WORLD_SIZE>1 but this PyTorch build has no torch.distributed; run a single process")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    return True


def cleanup() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else DistributedContext.from_env().rank


def is_main() -> bool:
    """True on the process that prints, logs and saves."""
    return get_rank() == 0


def wrap_ddp(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel when there are several processes, the model itself otherwise."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(model.parameters()).device
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (gloo has no AVG, so averages are sum / world_size)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (e.g. per-rank RNG state for a checkpoint)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision on every rank, so all processes stop at the same step."""
    if not is_dist():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
