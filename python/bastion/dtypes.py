"""``--dtype auto|float32|bfloat16``: which dtype the target and drafter run in.

``auto`` is bf16 where bf16 matmuls are fast (a CUDA GPU; a CPU with AMX or AVX512-BF16, read
from /proc/cpuinfo's flags) and fp32 elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHOICES = ("auto", "float32", "bfloat16")
_FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (or the given /proc/cpuinfo text) has AMX-BF16 or AVX512-BF16."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(f in flags for f in _FAST_BF16_FLAGS)


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The torch dtype for ``--dtype name`` on ``device``; ValueError for an unknown name."""
    if name not in CHOICES:
        raise ValueError(f"--dtype must be one of {', '.join(CHOICES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    if torch.device(device).type == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32
