"""What this machine is, from /proc/cpuinfo: the CPU's flags, and the name a measurement
gives its device (the GPU's, or the CPU model with its bf16 flags and the threads torch uses)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the flags that make bf16 matmuls fast on a CPU


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""


def _field(cpuinfo: str, name: str) -> str | None:
    """The first ``name : value`` line's value."""
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith(name)), None)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """This CPU's flags (or those of the given /proc/cpuinfo text)."""
    return set((_field(_cpuinfo() if cpuinfo is None else cpuinfo, "flags") or "").split())


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU model and its bf16 flags, e.g. "Intel(R) Xeon(R) Processor (amx_bf16 avx512_bf16)"."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    model = _field(cpuinfo, "model name") or platform.processor() or platform.machine()
    fast = [f for f in BF16_FLAGS if f in cpu_flags(cpuinfo)]
    return f"{model} ({' '.join(fast)})" if fast else model


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"
