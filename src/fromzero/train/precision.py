"""Mixed precision: bf16 autocast where the hardware does bf16 natively, fp32 otherwise.

bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling: weights and optimizer
state stay fp32 and only the matmuls run in bf16 inside `torch.autocast`. On a CPU without native
bf16 instructions autocast still works but is emulated and slower than fp32, so "auto" avoids it.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import sys
from typing import ContextManager

import torch

_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags() -> set[str] | None:
    """CPU feature flags from /proc/cpuinfo (Linux), or None where that file does not exist."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86 / arm
            flags.update(value.split())
    return flags


def _cpu_has_native_bf16() -> bool:
    flags = _cpu_flags()
    if flags is not None:
        return any(f in flags for f in _X86_BF16_FLAGS) or "bf16" in flags
    # No cpuinfo (macOS, Windows): trust PyTorch's own dispatch level; Apple M2+ report bf16 support.
    cap = torch.backends.cpu.get_cpu_capability()
    return cap.startswith("AVX512") or "SVE" in cap or platform.machine() == "arm64"


@functools.lru_cache(maxsize=None)
def bf16_supported(device_type: str = "cpu") -> bool:
    """Can (and should) this device run bf16 autocast? Checks native support, then a tiny matmul."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu" or not _cpu_has_native_bf16():
        return False
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.ones(4, 4) @ torch.ones(4, 4)
        return y.dtype == torch.bfloat16 and bool(torch.all(y == 4))
    except Exception:  # a build or platform without bf16 kernels
        return False


def resolve_precision(requested: str, device_type: str = "cpu", verbose: bool = True) -> str:
    """"auto" | "bf16" | "fp32" -> the precision actually used ("bf16" or "fp32").

    A bf16 request the device cannot honour falls back to fp32 with one line saying so.
    """
    if requested not in ("auto", "bf16", "fp32"):
        from fromzero.errors import FromzeroError

        raise FromzeroError(f"precision must be auto, bf16 or fp32, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    if bf16_supported(device_type):
        return "bf16"
    if requested == "bf16" and verbose:
        print(f"fromzero: precision=bf16 requested but this {device_type.upper()} has no native bf16 support; "
              "training in fp32 instead (set train.precision=fp32 to silence this)", file=sys.stderr)
    return "fp32"


def autocast(precision: str, device_type: str = "cpu") -> ContextManager:
    """The forward-pass context for `precision`: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
