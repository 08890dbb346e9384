"""Peak compute and memory bandwidth of the devices the roofline knows, and probes that
measure them on the device at hand (CPU included)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion_ext.timing import time_us


@dataclass(frozen=True)
class DeviceSpec:
    """A device as the roofline sees it: peak FLOP/s and memory bandwidth (bytes/s)."""

    name: str
    peak_flops: float
    bandwidth: float

    def __post_init__(self):
        for name in ("peak_flops", "bandwidth"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


# Vendor datasheet peaks: dense bf16 tensor-core FLOP/s (no structured sparsity) and HBM/GDDR
# bandwidth. Sustained figures are lower; calibration absorbs the gap.
DEVICES: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in (
        DeviceSpec("A100", 312e12, 2.039e12),
        DeviceSpec("H100", 989e12, 3.35e12),
        DeviceSpec("H200", 989e12, 4.8e12),
        DeviceSpec("A6000", 154.8e12, 0.768e12),
        DeviceSpec("L40S", 362e12, 0.864e12),
        DeviceSpec("RTX PRO 6000", 503.8e12, 1.792e12),
    )
}


def _median_s(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of one ``fn()`` after one warm-up. Single calls, no CUDA graph: the probes
    run for a tenth of a millisecond and more, so launch gaps hardly count."""
    return time_us(fn, device, repeats, warmup=1, cuda_graph=False)["median_us"] / 1e6


def measure_bandwidth(device: str | torch.device = "cpu", repeats: int = 5) -> float:
    """Bytes read + written per second of one device-local copy of 256 MiB."""
    device = torch.device(device)
    # 2 x 256 MiB spills every cache level (server CPUs have L3s of hundreds of MiB), so the
    # copy is bounded by memory.
    copy_elems = 256 * 2**20
    src = torch.empty(copy_elems, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2.0 * copy_elems / _median_s(lambda: dst.copy_(src), device, repeats)


def measure_device(device: str | torch.device = "cpu", dtype: torch.dtype | None = None, repeats: int = 5) -> DeviceSpec:
    """Probe a device: a square matmul for FLOP/s and a tensor copy for bandwidth.

    dtype: the element type to probe with; bf16 on CUDA and fp32 on the CPU by default
    (the dtypes the targets run in there). Takes about a second.
    """
    device = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    side = 4096 if device.type == "cuda" else 1024
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    matmul_s = _median_s(lambda: torch.mm(a, b), device, repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return DeviceSpec(f"{name} (measured)", 2.0 * side**3 / matmul_s, measure_bandwidth(device, repeats))
