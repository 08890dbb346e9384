"""GPU microbenchmark of build_tree: ours, the host-heap pipeline, the floor (the walks and
compact_kv: bench/bench_verify.py).

One run prints, side by side per configuration:
- ours: torch.ops.bastion_ext.build_tree, timed as CUDA-graph replays (10 calls per graph,
  CUDA events, 30 replays after warm-up; median and 20/80 % quantiles per call);
- host: the pipeline public tree builders use (log_softmax + torch.topk on the GPU, copy to
  the host, Python heapq best-first expansion, ancestor mask built with torch ops, copy back),
  wall clock with synchronisation, median of a few runs, at B = 1 only (it is slow);
- floor: one read of the logits at the device's measured copy bandwidth;
- N=1: ours with a one-node tree, i.e. the top-k / log-sum-exp scan and merge alone.
Grid: B in {1, 8, 32}, P = 16, V in {49152, 151936}, K in {8, 16, 32}, N in {64, 256, 1024},
bf16 logits, fixed policy with budget N.

Usage: python bench/bench_build_tree_cuda.py [--out DIR] [--quick]
Writes build_tree_cuda.json (device, versions, command, commit, rows) to bench/results/ and,
when given, to --out (default $OUT if set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import bastion_ext._C  # noqa: F401  (registers torch.ops.bastion_ext.*)
from bastion_ext.latency.devices import measure_bandwidth
from bastion_ext.reference import expand_lattice_ref
from bastion_ext.timing import time_us
from bastion_ext.tree import DraftTree

ROOT = Path(__file__).resolve().parents[1]
CALLS_PER_GRAPH = 10
REPLAYS = 30


def host_heap_build(logits: torch.Tensor, k: int, n: int) -> tuple[torch.Tensor, ...]:
    """The public builders' pipeline for one request: GPU top-k, host heap, torch-op mask, copy back."""
    logq, tok = torch.topk(torch.log_softmax(logits[0].float(), dim=-1), k, dim=-1)
    logq, tok = logq.cpu().tolist(), tok.cpu().tolist()
    tree = expand_lattice_ref(tok, logq, n)
    count = len(tree.parents)
    parents = torch.tensor(tree.parents)
    depth = torch.tensor(tree.depth)
    mask = torch.eye(count, dtype=torch.bool)
    # A parent pops before its children: OR parent rows in depth order, one level per step.
    for d in range(2, int(depth.max()) + 1):
        rows = (depth == d).nonzero().flatten()
        mask[rows] |= mask[parents[rows]]
    return (torch.tensor(tree.tokens).cuda(), parents.cuda(), depth.cuda(), mask.cuda())


def host_time_us(logits: torch.Tensor, k: int, n: int, reps: int) -> float:
    """Median wall-clock µs of the host-heap pipeline, its GPU work finished included: timed on
    the host's clock, since most of the pipeline is host work."""

    def build_and_wait():
        host_heap_build(logits, k, n)
        torch.cuda.synchronize()

    return time_us(build_and_wait, "cpu", reps, warmup=1)["median_us"]


def bench_build(batch: int, vocab: int, k: int, n: int, positions: int, bandwidth: float,
                host_reps: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(batch * 7 + vocab + k + n)
    logits = (torch.randn(batch, positions, vocab, device="cuda", generator=gen) * 3).to(torch.bfloat16)
    ctx = torch.zeros(batch, dtype=torch.int64, device="cuda")
    budgets = torch.full((batch,), n, dtype=torch.int32, device="cuda")
    t = DraftTree.empty(batch, n, positions, "cuda")
    args = tuple(t.tensors().values())  # the outputs in the schema's order
    ours = time_us(lambda: torch.ops.bastion_ext.build_tree(logits, ctx, budgets, None, None, k, 0, *args), "cuda",
                   REPLAYS, CALLS_PER_GRAPH)
    # The same call at N = 1: the top-k / log-sum-exp scan and the merge with a trivial tree,
    # so the rows show how the time splits between the scan and the expansion.
    t1 = DraftTree.empty(batch, 1, positions, "cuda")
    one = torch.ones(batch, dtype=torch.int32, device="cuda")
    args1 = tuple(t1.tensors().values())
    scan = time_us(lambda: torch.ops.bastion_ext.build_tree(logits, ctx, one, None, None, k, 0, *args1), "cuda",
                   REPLAYS, CALLS_PER_GRAPH)
    floor_us = logits.numel() * logits.element_size() / bandwidth * 1e6
    row = {"op": "build_tree", "batch": batch, "positions": positions, "vocab": vocab, "k": k,
           "max_nodes": n, "dtype": "bfloat16", "ours": ours, "ours_at_n1": scan, "floor_us": floor_us,
           "mean_n_nodes": float(t.n_nodes.float().mean())}
    if host_reps and batch == 1:
        row["host_heap_us"] = host_time_us(logits, k, n, host_reps)
        row["host_over_ours"] = row["host_heap_us"] / ours["median_us"]
    return row


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="extra directory for the JSON")
    parser.add_argument("--quick", action="store_true", help="B=1 and V=151936 only (smoke run)")
    parser.add_argument("--host-reps", type=int, default=3, help="runs of the host-heap pipeline")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_build_tree_cuda: no CUDA device, nothing to measure")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    positions = 16
    bandwidth = measure_bandwidth("cuda", repeats=10)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    batches, vocabs = ((1,), (151936,)) if opts.quick else ((1, 8, 32), (49152, 151936))
    rows = []
    header = (f"{'B':>3} {'V':>7} {'K':>3} {'N':>5} | {'ours µs (q20-q80)':>24} | {'N=1 µs':>7} "
              f"| {'floor µs':>8} | {'host µs':>9} {'ratio':>7}")
    print(header)
    print("-" * len(header))
    for batch in batches:
        for vocab in vocabs:
            for k in (8, 16, 32):
                for n in (64, 256, 1024):
                    row = bench_build(batch, vocab, k, n, positions, bandwidth, opts.host_reps)
                    rows.append(row)
                    o = row["ours"]
                    host = f"{row['host_heap_us']:9.0f} {row['host_over_ours']:6.0f}x" if "host_heap_us" in row else f"{'':>9} {'':>7}"
                    print(f"{batch:>3} {vocab:>7} {k:>3} {n:>5} | {o['median_us']:8.1f} ({o['q20_us']:6.1f}-{o['q80_us']:6.1f}) "
                          f"| {row['ours_at_n1']['median_us']:7.1f} | {row['floor_us']:8.2f} | {host}", flush=True)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": git_commit(),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "timing": f"CUDA-graph replay of {CALLS_PER_GRAPH} calls, {REPLAYS} replays, CUDA events",
        "rows": rows,
    }
    targets = [ROOT / "bench" / "results"] + ([Path(opts.out)] if opts.out else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "build_tree_cuda.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {folder / 'build_tree_cuda.json'}")


if __name__ == "__main__":
    main()
