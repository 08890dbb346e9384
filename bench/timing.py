"""The benches' one timing helper: per-call microseconds of a function on its device.

CUDA: the calls captured in a CUDA graph (``calls_per_graph`` per replay) and the replays timed
with events, so that launch gaps do not count; CPU: perf_counter around each call. Both warm up
first and return the median with the 20 % and 80 % quantiles.
"""

from __future__ import annotations

import statistics
import time

import torch


def _quantiles(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return {"median_us": statistics.median(times), "q20_us": q[0], "q80_us": q[3]}


def time_us(fn, device, repeats: int = 30, calls_per_graph: int = 10) -> dict[str, float]:
    """Per-call µs of ``fn()`` (median, q20, q80) on ``device`` (a torch.device or string)."""
    if torch.device(device).type != "cuda":
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
        return _quantiles(times)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls_per_graph)
    return _quantiles(times)
