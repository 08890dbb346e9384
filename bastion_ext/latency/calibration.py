"""Offline calibration: time the target over a grid of (new tokens, context length), then fit
the roofline's effective FLOP/s, bandwidth and overhead to those times by least squares."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ._checks import as_float64
from .model_spec import ModelSpec
from .roofline import RooflineModel


@dataclass(frozen=True)
class VerifyGrid:
    """Measured forward times of ``ns[i]`` new tokens over ``cs[j]`` cached ones.

    ns: (I,) int64; cs: (J,) int64; samples: (R, J, I) float64 seconds, one slice per sweep.
    """

    ns: torch.Tensor
    cs: torch.Tensor
    samples: torch.Tensor

    @property
    def seconds(self) -> torch.Tensor:
        """(J, I) float64: the median over sweeps."""
        return self.samples.median(dim=0).values

    @property
    def fastest(self) -> torch.Tensor:
        """(J, I) float64: the minimum over sweeps. Load elsewhere on a shared machine only ever
        adds time, so on a busy host the minimum is the better estimate of the undisturbed cost."""
        return self.samples.min(dim=0).values

    def points(self, statistic: str = "median") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flattened (n_tokens, context_len, seconds), each (J * I,) float64, c-major;
        statistic: "median" or "min" over sweeps."""
        if statistic not in ("median", "min"):
            raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
        n = self.ns.to(torch.float64).expand(len(self.cs), -1).reshape(-1)
        c = self.cs.to(torch.float64)[:, None].expand(-1, len(self.ns)).reshape(-1)
        seconds = self.seconds if statistic == "median" else self.fastest
        return n, c, seconds.reshape(-1)

    def to_dict(self) -> dict:
        return {"ns": self.ns.tolist(), "cs": self.cs.tolist(), "median_s": self.seconds.tolist(), "min_s": self.fastest.tolist(), "samples_s": self.samples.tolist()}


def measure_verify_grid(
    forward_fn: Callable[[int, int], object],
    ns,
    cs,
    repeats: int = 3,
    warmup: int = 1,
    synchronize: Callable[[], None] | None = None,
) -> VerifyGrid:
    """Time ``forward_fn(n, c)`` (one forward of n new tokens over a c-token cache) on a grid.

    The grid is swept ``warmup`` times untimed, then ``repeats`` times timed (perf_counter,
    with ``synchronize()`` after each call when given, e.g. ``torch.cuda.synchronize``); each
    point keeps every sample (``VerifyGrid.seconds`` is their median). Whole sweeps rather than back-to-back repeats of
    one point, so that a burst of load elsewhere on the machine spreads over many points
    instead of spoiling one. Within a sweep points run c-major (every n for one c, then the
    next c), so ``forward_fn`` can keep one prefilled cache per c.
    ns, cs: non-empty sequences of ints (n >= 1, c >= 0).
    """
    ns = [int(n) for n in ns]
    cs = [int(c) for c in cs]
    if not ns or min(ns) < 1:
        raise ValueError(f"ns must be a non-empty list of ints >= 1, got {ns}")
    if not cs or min(cs) < 0:
        raise ValueError(f"cs must be a non-empty list of ints >= 0, got {cs}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    samples = torch.empty(repeats, len(cs), len(ns), dtype=torch.float64)
    for sweep in range(warmup + repeats):
        for j, c in enumerate(cs):
            for i, n in enumerate(ns):
                t0 = time.perf_counter()
                forward_fn(n, c)
                if synchronize is not None:
                    synchronize()
                if sweep >= warmup:
                    samples[sweep - warmup, j, i] = time.perf_counter() - t0
    return VerifyGrid(torch.tensor(ns), torch.tensor(cs), samples)


def rmse(model: RooflineModel, n_tokens, context_lens, seconds) -> float:
    """Root mean square error (seconds) of ``model``'s forward time on measured points."""
    measured = as_float64(seconds, "seconds", strict=True)
    predicted = model.forward_seconds(n_tokens, context_lens)
    return float(((predicted - measured) ** 2).mean().sqrt())


@dataclass(frozen=True)
class Calibration:
    """A fitted roofline and its RMSE (seconds) on the fit points, before and after."""

    model: RooflineModel
    rmse_before: float
    rmse_after: float

    def to_dict(self) -> dict:
        m = self.model
        return {
            "peak_flops": m.peak_flops,
            "bandwidth": m.bandwidth,
            "overhead": m.overhead,
            "overlap": m.overlap,
            "short_tokens": m.short_tokens,
            "short_overhead": m.short_overhead,
            "rmse_before_s": self.rmse_before,
            "rmse_after_s": self.rmse_after,
        }


def _fit_linear(columns: torch.Tensor, seconds: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """Least squares ``seconds ≈ columns @ coef`` with every coefficient >= 0 and the last
    (1 / bandwidth) > 0; overhead columns whose optimum is negative are dropped (held at 0).

    columns: (M, K) float64, the last column the bound times. Returns (coef (K,), sum of
    squared errors), or None when no physical solution exists."""
    active = torch.ones(columns.shape[1], dtype=torch.bool)
    while True:
        coef = torch.zeros(columns.shape[1], dtype=torch.float64)
        coef[active] = torch.linalg.lstsq(columns[:, active], seconds[:, None]).solution[:, 0]
        negative = (coef < 0) & active
        negative[-1] = False
        if not bool(negative.any()):
            break
        active &= ~negative
    if float(coef[-1]) <= 0:
        return None
    return coef, float(((columns @ coef - seconds) ** 2).sum())


def fit_roofline(model: ModelSpec, n_tokens, context_lens, seconds, start: RooflineModel | None = None) -> Calibration:
    """Fit effective FLOP/s, bandwidth, overlap and overhead(s) to measured forward times.

    n_tokens, context_lens, seconds: (M,) numbers (a VerifyGrid's ``points()``), M >= 3,
    seconds > 0. start: the uncalibrated model whose RMSE is reported as ``rmse_before``
    (None: report NaN).

    With the machine balance r = FLOP/s / bandwidth and the overlap fixed, the roofline is
    linear in (overheads, 1 / bandwidth), so the fit is a search over log r (a coarse grid,
    then finer ones around the best), overlap in {0, 1/4, ..., 1} and the short-forward
    regime boundary (none, or after each measured n that leaves two sizes either side), with
    a non-negative linear least-squares solve at each point.
    """
    n = as_float64(n_tokens, "n_tokens", minimum=1.0).reshape(-1)
    c = as_float64(context_lens, "context_lens").reshape(-1)
    t = as_float64(seconds, "seconds", strict=True).reshape(-1)
    if not (n.shape == c.shape == t.shape):
        raise ValueError(f"n_tokens, context_lens and seconds must have one length, got {n.shape[0]}, {c.shape[0]}, {t.shape[0]}")
    if t.numel() < 3:
        raise ValueError(f"seconds must hold at least 3 points to fit 3 coefficients, got {t.numel()}")
    sizes = torch.unique(n).tolist()
    splits = [0] + [int(s) for s in sizes[1:-2]]

    def search(overlap: float, split: int):
        """Best (sse, log balance, coefficients) for one overlap and regime boundary."""
        short = (n <= split).double()
        overheads = [short, 1.0 - short] if split else [torch.ones_like(n)]
        found = None
        grid = torch.linspace(-2.0, 5.0, 71).tolist()
        for _ in range(3):
            for log_balance in grid:
                # Bandwidth 1 byte/s and peak = balance: bound times in units of 1 / bandwidth.
                bound = RooflineModel(model, 10.0**log_balance, 1.0, overlap=overlap).bound_times(n, c)
                solved = _fit_linear(torch.stack(overheads + [bound], dim=1), t)
                if solved is not None and (found is None or solved[1] < found[0]):
                    found = (solved[1], log_balance, solved[0])
            if found is None:
                return None
            step = grid[1] - grid[0]
            grid = torch.linspace(found[1] - step, found[1] + step, 21).tolist()
        return found

    best = None
    for overlap in (0.0, 0.25, 0.5, 0.75, 1.0):
        for split in splits:
            found = search(overlap, split)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], found[1], overlap, split, found[2])
    if best is None:
        raise ValueError("seconds admit no roofline with positive bandwidth (do they fall as n grows?)")
    _, log_balance, overlap, split, coef = best
    bandwidth = 1.0 / float(coef[-1])
    short_overhead, overhead = (float(coef[0]), float(coef[1])) if split else (0.0, float(coef[0]))
    fitted = RooflineModel(model, 10.0**log_balance * bandwidth, bandwidth, overhead, overlap, split, short_overhead)
    before = rmse(start, n, c, t) if start is not None else float("nan")
    return Calibration(fitted, before, rmse(fitted, n, c, t))
