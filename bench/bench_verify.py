"""Microbenchmark of the per-round ops after the verify forward: the acceptance walks
(verify_greedy, verify_sample) and compact_kv, on CUDA (graph replays) or the CPU.

Walks: a chain tree (node i's only child is i + 1) that the target accepts to full depth,
the longest walk a tree of its capacity allows; (B, N) in {(1, 1024), (32, 256)}, P = 16;
verify_sample with V = 151936 one-hot rows. compact_kv: a Qwen3-8B-shaped cache (36 layers,
8 KV heads, head_dim 128, bf16, 4096 slots) with a path of P = 16 accepted nodes per request,
B in {1, 32}; beside it the bytes it moves over the measured copy bandwidth (its floor) and
the cost of what it replaces, re-concatenating a DynamicCache-style cache of the context.

Usage: python bench/bench_verify.py [--out DIR] [--small]
--small runs shapes a CPU finishes in seconds (the GPU script's rehearsal). Writes
verify_ops_<device>.json (device, versions, command, rows) to --out (default $OUT, else
bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bastion_ext import ops  # noqa: E402
from bastion_ext.latency.devices import measure_bandwidth  # noqa: E402
from bastion_ext.timing import time_us  # noqa: E402
from bastion_ext.tree import DraftTree, VerifyResult  # noqa: E402

POSITIONS = 16


def chain_tree(batch: int, n: int, device) -> DraftTree:
    """A chain of n nodes, token i at node i, that a target answering i + 1 accepts to depth P."""
    tree = DraftTree.empty(batch, n, POSITIONS, device)
    tree.tokens.copy_(torch.arange(n, device=device).repeat(batch, 1))
    tree.first_child.fill_(-1)
    tree.first_child[:, :POSITIONS] = torch.arange(POSITIONS, dtype=torch.int32, device=device)
    tree.next_sibling.fill_(-1)
    return tree


def bench_walks(batch: int, n: int, vocab: int, device) -> list[dict]:
    tree = chain_tree(batch, n, device)
    out = VerifyResult.empty(batch, POSITIONS, device)
    target = torch.arange(n + 1, device=device).repeat(batch, 1)
    greedy = time_us(lambda: ops.verify_greedy(tree, target, out=out), device)
    assert int(out.accept_len.min()) == POSITIONS, "the chain walk must accept every position"
    probs = torch.zeros((batch, n + 1, vocab), device=device)
    probs.scatter_(2, (target % vocab)[..., None], 1.0)
    uniforms = torch.rand((batch, n + 1), device=device)
    sample = time_us(lambda: ops.verify_sample(tree, probs, uniforms, out=out), device)
    assert int(out.accept_len.min()) == POSITIONS, "one-hot rows must accept every position"
    shape = {"batch": batch, "max_nodes": n, "positions": POSITIONS}
    return [{"op": "verify_greedy", **shape, "time": greedy}, {"op": "verify_sample", **shape, "vocab": vocab, "time": sample}]


def bench_compact(batch: int, layers: int, heads: int, head_dim: int, slots: int, device, bandwidth: float | None) -> dict:
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    cache = torch.randn((2 * layers, batch, heads, slots, head_dim), device=device).to(dtype)
    context = slots // 2
    cache_lens = torch.full((batch,), context, dtype=torch.int64, device=device)
    accepted = (torch.arange(POSITIONS, dtype=torch.int32, device=device) * 3).repeat(batch, 1)  # every third node
    accept_len = torch.full((batch,), POSITIONS, dtype=torch.int32, device=device)
    ours = time_us(lambda: ops.compact_kv(cache, cache_lens, accepted, accept_len), device)
    moved = 2 * 2 * layers * batch * heads * POSITIONS * head_dim * cache.element_size()  # read + write
    # What a DynamicCache-style commit pays instead: every layer's context copied into a new tensor.
    keep = torch.arange(context + 1 + POSITIONS, device=device)
    concat = time_us(lambda: cache.index_select(3, keep), device, repeats=10)
    row = {"op": "compact_kv", "batch": batch, "layers": layers, "kv_heads": heads, "head_dim": head_dim, "slots": slots,
           "context": context, "dtype": str(dtype).removeprefix("torch."), "time": ours, "bytes_moved": moved,
           "reconcatenate_context": concat}
    if bandwidth:
        row["floor_us"] = moved / bandwidth * 1e6
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="directory for the JSON (default $OUT, else bench/results)")
    parser.add_argument("--small", action="store_true", help="CPU-sized shapes (rehearsal)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    bandwidth = measure_bandwidth(device, repeats=10) if device.type == "cuda" else None
    rows = []
    walks = ((1, 64, 1024), (4, 32, 1024)) if args.small else ((1, 1024, 151936), (32, 256, 151936))
    for batch, n, vocab in walks:
        rows += bench_walks(batch, n, vocab, device)
    caches = ((1, 2, 2, 64, 256), (4, 2, 2, 64, 256)) if args.small else ((1, 36, 8, 128, 4096), (32, 36, 8, 128, 4096))
    for shape in caches:
        rows.append(bench_compact(*shape, device, bandwidth))
    for row in rows:
        t = row["time"]
        extra = f", floor {row['floor_us']:.1f} µs" if "floor_us" in row else ""
        extra += f"; re-concatenating the context instead: {row['reconcatenate_context']['median_us']:.0f} µs" if "reconcatenate_context" in row else ""
        print(f"{row['op']:<14} B={row['batch']:<3} {t['median_us']:9.1f} µs ({t['q20_us']:.1f}-{t['q80_us']:.1f}){extra}")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} cpu, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else "bench/bench_verify.py " + " ".join(argv),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "timing": "CUDA-graph replays with events" if device.type == "cuda" else "perf_counter per call",
        "rows": rows,
    }
    folder = Path(args.out) if args.out else ROOT / "bench" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"verify_ops_{device.type}{'_small' if args.small else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
