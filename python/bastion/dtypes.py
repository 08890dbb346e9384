"""``--dtype auto|float32|bfloat16``: which dtype the target and drafter run in.

``auto`` is bf16 where bf16 matmuls are fast (a CUDA GPU; a CPU with AMX or AVX512-BF16, read
from /proc/cpuinfo's flags) and fp32 elsewhere.
"""

from __future__ import annotations

import torch

from .machine import BF16_FLAGS, cpu_flags

CHOICES = ("auto", "float32", "bfloat16")


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (or the given /proc/cpuinfo text) has AMX-BF16 or AVX512-BF16."""
    return bool(cpu_flags(cpuinfo) & set(BF16_FLAGS))


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The torch dtype for ``--dtype name`` on ``device``; ValueError for an unknown name."""
    if name not in CHOICES:
        raise ValueError(f"--dtype must be one of {', '.join(CHOICES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    if torch.device(device).type == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32
