"""Input checks shared by the latency modules: float64 tensors, named in every error."""

from __future__ import annotations

import math

import torch


def as_float64(value, name: str, *, minimum: float = 0.0, strict: bool = False) -> torch.Tensor:
    """``value`` as a float64 tensor (kept on its device if it is one), finite and >= (or >)
    ``minimum``; raises ValueError naming ``name`` otherwise."""
    tensor = value.to(torch.float64) if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if tensor.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf), got {tensor.tolist() if tensor.numel() < 8 else 'a tensor with non-finite entries'}")
    bad = tensor <= minimum if strict else tensor < minimum
    if bool(bad.any()):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got min {tensor.min().item()}")
    return tensor


def as_value(value, name: str, *, minimum: float = 0.0, strict: bool = False) -> float | torch.Tensor:
    """``as_float64``, except that a Python number stays a float (checked the same way): the
    roofline's arithmetic runs on either, and on floats a scalar estimate, which the speedup
    floor asks for every round, costs a microsecond instead of a hundred."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return as_float64(value, name, minimum=minimum, strict=strict)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite (no NaN or inf), got {[value]}")
    if value <= minimum if strict else value < minimum:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got min {value}")
    return value
