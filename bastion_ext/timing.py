"""The one timing helper of the library and its benches: per-call microseconds of a function
on its device, as the median with the 20 % and 80 % quantiles.

CUDA, by default: the calls captured in a CUDA graph (``calls_per_graph`` per replay) and the
replays timed with events, so that launch gaps do not count. CUDA with ``cuda_graph=False``,
for work that cannot be captured (a compile or an autotuning on first call) or that should be
timed cold: each call timed with events, the GPU given a head start first so that the host's
launch overhead does not count either, and optionally the L2 cache flushed before each call.
CPU: perf_counter around each call. All modes make ``warmup`` untimed calls first.
"""

from __future__ import annotations

import statistics
import time

import torch

# GPU cycles (about 0.5 ms) the device sleeps before each graph-free call: the host launches
# the call meanwhile, so the events bracket the kernels' own time, as inside a CUDA graph.
_HEAD_START_CYCLES = 1_000_000
# Several times the L2 of current GPUs (tens of MiB), so zeroing it evicts the call's data.
_L2_FLUSH_BYTES = 256 * 2**20


def _quantiles(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return {"median_us": statistics.median(times), "q20_us": q[0], "q80_us": q[3]}


def _cpu_times(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return times


def _graph_times(fn, repeats: int, warmup: int, calls_per_graph: int) -> list[float]:
    # Capture needs the warm-up (lazy allocations, cuBLAS handles) on a side stream first.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls_per_graph)
    return times


def _event_times(fn, repeats: int, warmup: int, flush_l2: bool) -> list[float]:
    for _ in range(warmup):
        fn()
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device="cuda") if flush_l2 else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        torch.cuda._sleep(_HEAD_START_CYCLES)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e3 for start, end in zip(starts, ends)]


def time_us(
    fn,
    device,
    repeats: int = 30,
    calls_per_graph: int = 10,
    *,
    warmup: int = 3,
    cuda_graph: bool = True,
    flush_l2: bool = False,
) -> dict[str, float]:
    """Per-call µs of ``fn()`` on ``device`` (a torch.device or string).

    Parameters
    ----------
    fn : callable with no arguments
        The work to time; on CUDA it only launches (no host sync), as a graph requires.
    device : torch.device or str
        Where ``fn`` runs; any non-CUDA device is timed with perf_counter.
    repeats : int
        Timed samples: graph replays, or single calls.
    calls_per_graph : int
        Calls captured in the graph (CUDA with ``cuda_graph`` only); a sample is one replay
        divided by this.
    warmup : int
        Untimed calls first (and as many untimed replays of the graph).
    cuda_graph : bool
        On CUDA, time graph replays (True) or single calls with a head start (False).
    flush_l2 : bool
        On CUDA without a graph, flush the L2 cache before each call.

    Returns
    -------
    {"median_us", "q20_us", "q80_us"}: floats, µs per call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    on_cuda = torch.device(device).type == "cuda"
    if flush_l2 and not (on_cuda and not cuda_graph):
        raise ValueError("flush_l2 needs a CUDA device and cuda_graph=False (a flush inside a graph would be timed)")
    if not on_cuda:
        times = _cpu_times(fn, repeats, warmup)
    else:
        # Streams, events, the sleep and the flush buffer all belong to the current device.
        with torch.cuda.device(torch.device(device)):
            times = _graph_times(fn, repeats, warmup, calls_per_graph) if cuda_graph else _event_times(fn, repeats, warmup, flush_l2)
    return _quantiles(times)
