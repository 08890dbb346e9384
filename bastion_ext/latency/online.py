"""Online correction of the latency model from each round's measured time, and a timer that
reads those times without stalling the round."""

from __future__ import annotations

import bisect
import math
import time
from collections import deque

import torch


class OnlineCorrection:
    """Per n-bucket correction factor = exp(median of the last ``window`` log(measured / predicted)).

    A median ignores a single outlier outright (a GC pause moves nothing) and follows a step
    change in speed once it fills half the window: within ``window // 2 + 1`` rounds of that
    bucket. Buckets are powers of two in n (1, 2-3, 4-7, ...); between bucket centres the
    log-factor is interpolated in log2(n), beyond them held constant, and with no data at all
    the factor is 1.
    """

    def __init__(self, window: int = 7, n_buckets: int = 16):
        if window < 3:
            raise ValueError(f"window must be >= 3 for a median to reject an outlier, got {window}")
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        self.window = window
        self._history = [deque(maxlen=window) for _ in range(n_buckets)]
        self._known: list[tuple[float, float]] | None = None  # log_factors until the next observe

    def _bucket(self, n: int) -> int:
        return min(int(n).bit_length() - 1, len(self._history) - 1)

    def observe(self, n: int, measured_seconds: float, predicted_seconds: float) -> None:
        """Record one round: ``n`` nodes (>= 1), its measured and predicted seconds (> 0, finite)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        for name, value in (("measured_seconds", measured_seconds), ("predicted_seconds", predicted_seconds)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        self._history[self._bucket(n)].append(math.log(measured_seconds / predicted_seconds))
        self._known = None

    def log_factors(self) -> list[tuple[float, float]]:
        """(log2 of the bucket centre, median log-ratio) for every bucket with data (kept until
        the next observation: the floor asks for them several times a round)."""
        if self._known is not None:
            return self._known
        out = []
        for index, history in enumerate(self._history):
            if history:
                ordered = sorted(history)
                middle = len(ordered) // 2
                median = ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
                out.append((index + 0.5 * (index > 0), median))
        self._known = out
        return out

    def samples(self, n: int) -> int:
        """Measurements held for ``n`` nodes' bucket (at most ``window``)."""
        return len(self._history[self._bucket(n)])

    def factor(self, n: int) -> float:
        """The correction factor of ``n`` (>= 1) nodes: ``factors(n)[-1]`` in host floats (the
        floor asks for one value every round, and the tensor path costs 40 us of a plain step)."""
        known = self.log_factors()
        if len(known) <= 1:
            return math.exp(known[0][1]) if known else 1.0
        x = math.log2(n)
        centres = [k[0] for k in known]
        right = min(max(bisect.bisect_left(centres, x), 1), len(known) - 1)
        (x0, v0), (x1, v1) = known[right - 1], known[right]
        weight = min(max((x - x0) / (x1 - x0), 0.0), 1.0)
        return math.exp(v0 + weight * (v1 - v0))

    def factors(self, n_max: int) -> torch.Tensor:
        """Correction factors for n = 1..n_max: (n_max,) float64, >0."""
        known = self.log_factors()
        if len(known) <= 1:
            return torch.full((n_max,), math.exp(known[0][1]) if known else 1.0, dtype=torch.float64)
        x = torch.log2(torch.arange(1, n_max + 1, dtype=torch.float64))
        centres = torch.tensor([k[0] for k in known], dtype=torch.float64)
        values = torch.tensor([k[1] for k in known], dtype=torch.float64)
        right = torch.searchsorted(centres, x).clamp(1, len(known) - 1)
        left = right - 1
        weight = ((x - centres[left]) / (centres[right] - centres[left])).clamp(0.0, 1.0)
        return torch.exp(values[left] + weight * (values[right] - values[left]))


class RoundTimer:
    """Measures round times without a host sync on the round's path.

    On CUDA, ``start``/``stop`` record events on the current stream and ``ready()`` returns
    the rounds whose end event has completed (``Event.query``, non-blocking), typically one
    round later. On the CPU the round is synchronous already and perf_counter is read directly.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self._pending: deque = deque()
        self._open = None

    def start(self) -> None:
        if self.device.type == "cuda":
            self._open = torch.cuda.Event(enable_timing=True)
            self._open.record()
        else:
            self._open = time.perf_counter()

    def stop(self, tag) -> None:
        """End the round started last; ``tag`` (anything, e.g. (n_nodes, predicted)) comes back with its time."""
        if self._open is None:
            raise ValueError("stop() called without a matching start()")
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((tag, self._open, end))
        else:
            self._pending.append((tag, time.perf_counter() - self._open, None))
        self._open = None

    def ready(self) -> list[tuple[object, float]]:
        """(tag, seconds) of every finished round not yet returned, oldest first; never blocks."""
        done = []
        while self._pending:
            tag, begin, end = self._pending[0]
            if end is None:
                done.append((tag, begin))
            elif end.query():
                done.append((tag, begin.elapsed_time(end) / 1e3))
            else:
                break
            self._pending.popleft()
        return done
