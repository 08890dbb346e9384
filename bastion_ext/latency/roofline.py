"""The roofline latency of a target forward: per layer the larger of its compute time and its
memory time, plus the LM head, plus a fixed per-forward overhead (launches, Python, sync)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import as_float64, as_value
from .devices import DeviceSpec
from .model_spec import ModelSpec


@dataclass(frozen=True)
class RooflineModel:
    """Forward latency of ``model`` on a device with effective ``peak_flops`` (FLOP/s),
    ``bandwidth`` (bytes/s) and ``overhead`` (seconds per forward).

    Per layer (and for the LM head) the time is max(compute, memory) + (1 - overlap) *
    min(compute, memory): ``overlap`` = 1 is the ideal roofline (a GPU streams weights while it
    computes), 0 adds the two (a CPU running one BLAS call after another). Forwards of at most
    ``short_tokens`` tokens pay ``short_overhead`` instead of ``overhead``: CPU BLAS switches
    from matrix-vector to matrix-matrix kernels there, a step no roofline term describes.

    Uncalibrated, the peaks are a DeviceSpec's, overlap 1 and no overhead; ``fit_roofline``
    fits all of them to measured times.
    """

    model: ModelSpec
    peak_flops: float
    bandwidth: float
    overhead: float = 0.0
    overlap: float = 1.0
    short_tokens: int = 0
    short_overhead: float = 0.0

    def __post_init__(self):
        as_float64(self.peak_flops, "peak_flops", strict=True)
        as_float64(self.bandwidth, "bandwidth", strict=True)
        as_float64(self.overhead, "overhead")
        as_float64(self.short_overhead, "short_overhead")
        if not 0.0 <= self.overlap <= 1.0:
            raise ValueError(f"overlap must be in [0, 1], got {self.overlap}")
        if not isinstance(self.short_tokens, int) or self.short_tokens < 0:
            raise ValueError(f"short_tokens must be an int >= 0, got {self.short_tokens!r}")

    @classmethod
    def from_device(cls, model: ModelSpec, device: DeviceSpec, overhead: float = 0.0) -> "RooflineModel":
        return cls(model, device.peak_flops, device.bandwidth, overhead)

    def _combine(self, compute, memory):
        """max + (1 - overlap) * min of two float64 tensors, or of two floats."""
        if isinstance(compute, float):
            return max(compute, memory) + (1.0 - self.overlap) * min(compute, memory)
        return torch.maximum(compute, memory) + (1.0 - self.overlap) * torch.minimum(compute, memory)

    def bound_times(self, n_tokens, context_len, batch: int = 1) -> torch.Tensor:
        """Roofline time without the overhead, summed over the layers and the head.

        n_tokens: new tokens of the forward, summed over the batch (>= 1). context_len: cached
        tokens per request (>= 0), broadcastable with ``n_tokens``. Numbers, sequences or
        tensors. Returns float64 seconds of the broadcast shape (on the inputs' device), or a
        float when both are numbers.
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        n = as_value(n_tokens, "n_tokens", minimum=1.0)
        c = as_value(context_len, "context_len")
        if isinstance(n, float) != isinstance(c, float):  # one of them a tensor: both are
            n, c = as_float64(n, "n_tokens"), as_float64(c, "context_len")
        if isinstance(n, torch.Tensor):
            c = c.to(n.device)
        layer_flops, layer_bytes = self.model.layer_cost(n, c, batch)
        head_flops, head_bytes = self.model.head_cost(n)
        layer = self._combine(layer_flops / self.peak_flops, layer_bytes / self.bandwidth)
        head = self._combine(head_flops / self.peak_flops, head_bytes / self.bandwidth)
        return self.model.n_layers * layer + head

    def overhead_of(self, n_tokens):
        """Fixed seconds of a forward of ``n_tokens`` tokens (float64 tensor of its shape, or a
        float for a number)."""
        n = as_value(n_tokens, "n_tokens", minimum=1.0)
        if isinstance(n, float):
            return self.short_overhead if n <= self.short_tokens else self.overhead
        # float64 throughout: torch.where of two Python floats makes them float32.
        return torch.full_like(n, self.overhead).masked_fill(n <= self.short_tokens, self.short_overhead)

    def forward_seconds(self, n_tokens, context_len, batch: int = 1):
        """Predicted seconds of one forward of ``n_tokens`` new tokens over ``context_len`` cached
        tokens (see ``bound_times``): float64 tensor of the broadcast shape, or a float when
        both are numbers."""
        return self.overhead_of(n_tokens) + self.bound_times(n_tokens, context_len, batch)

    def compute_bound(self, n_tokens, context_len, batch: int = 1) -> torch.Tensor:
        """bool tensor: whether the decoder layers are compute-bound at these sizes."""
        n = as_float64(n_tokens, "n_tokens", minimum=1.0)
        c = as_float64(context_len, "context_len").to(n.device)
        flops, bytes_moved = self.model.layer_cost(n, c, batch)
        return flops / self.peak_flops > bytes_moved / self.bandwidth
