"""Tree attention on the GPU: ours beside SDPA with a dense mask, FlexAttention with a block
mask of the same tree, and the physical floor, in one run.

    python bench/bench_tree_attention.py [--out PATH] [--check] [--budget-s S]

Every shape attends B requests' verify tokens (root + N nodes of a best-first tree over a random
top-8 lattice of 16 positions) to an L-token cache in the layout of a Hugging Face cache after
its update (the verify tokens' keys follow the cache). The floor of a shape is the larger of
its bytes (K/V read once, q read, out written) over the measured copy bandwidth and its useful
FLOPs (the unmasked query-key pairs, 4 * D each) over the measured bf16 matmul rate, both
measured in the same run. Times are medians with the 20/80 quantiles of CUDA-event timings
of each call's GPU work (``bastion_ext.timing.time_us`` without a graph: L2 flushed before
each call, the host given a head start so that Python launch overhead is not counted, as
inside a CUDA graph); ``ours_eager_ms`` is ``triton.testing.do_bench`` of our wrapper as an
eager caller sees it. ``--check`` runs the correctness comparison only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion_ext.attention import plan as attention  # noqa: E402  (the tile heuristics the sweep swaps)
from bastion_ext.attention import tree_attention  # noqa: E402
from bastion_ext.latency.devices import measure_bandwidth  # noqa: E402
from bastion_ext.reference import ancestor_bits_ref, expand_lattice_ref  # noqa: E402
from bastion_ext.timing import time_us  # noqa: E402

# Qwen3-8B and Llama-3.1-8B have the same attention shape (32 query heads, 8 KV heads,
# head_dim 128), so one row serves both.
MODELS = {"qwen3-8b / llama-3.1-8b": (32, 8, 128)}
TREE_SIZES = (16, 64, 256, 1024)
CACHE_LENS = (512, 4096, 16384)
BATCHES = (1, 8)
QUANTILES = [0.5, 0.2, 0.8]
LATTICE_POSITIONS, LATTICE_K = 16, 8


def lattice_tree_parents(batch: int, n_nodes: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, n_nodes) parents of best-first trees over random top-K lattices, the shape of a
    real draft tree (deep along the likely path, wide near the root)."""
    rows = []
    for _ in range(batch):
        logits = torch.randn(LATTICE_POSITIONS, 64, generator=gen) * 2.5
        logq = torch.log_softmax(logits, -1).topk(LATTICE_K, -1).values
        tokens = [list(range(LATTICE_K))] * LATTICE_POSITIONS
        tree = expand_lattice_ref(tokens, logq.tolist(), n_nodes)
        rows.append(tree.parents + [-1] * (n_nodes - len(tree.parents)))
    return torch.tensor(rows, dtype=torch.int32)


def cold_time_us(fn) -> dict[str, float]:
    """Per-call µs of ``fn``'s GPU work (median, q20, q80), L2 flushed before each call.

    No CUDA graph: torch.compile'd FlexAttention compiles on its first calls, and the times
    are cold-cache ones, which a flush inside a graph would add to."""
    return time_us(fn, "cuda", cuda_graph=False, flush_l2=True)


def measure_ceilings() -> dict[str, float]:
    """Device-to-device copy bandwidth (read + write counted) and bf16 matmul rate."""
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_s = cold_time_us(lambda: a @ b)["median_us"] * 1e-6
    del a, b
    return {"copy_bytes_per_s": measure_bandwidth("cuda", repeats=10), "bf16_matmul_flop_per_s": 2 * 8192**3 / mm_s}


def make_case(batch, n_q_heads, n_kv_heads, head_dim, n_nodes, cache_len, gen):
    n_verify = n_nodes + 1
    bits = ancestor_bits_ref(lattice_tree_parents(batch, n_nodes, gen))
    q = torch.randn(batch, n_q_heads, n_verify, head_dim, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(batch, n_kv_heads, cache_len + n_verify, head_dim, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    lens = torch.full((batch,), cache_len, dtype=torch.int64, device="cuda")
    return q, k, v, bits.cuda(), lens


def dense_mask(bits: torch.Tensor, cache_len: int) -> torch.Tensor:
    """(B, 1, N + 1, L + N + 1) bool, built on the GPU the way a user would for SDPA."""
    batch, n_nodes, _ = bits.shape
    cols = torch.arange(n_nodes, device=bits.device)
    ancestors = ((bits[:, :, cols // 32] >> (cols % 32)) & 1).bool()
    mask = torch.ones(batch, n_nodes + 1, cache_len + n_nodes + 1, dtype=torch.bool, device=bits.device)
    mask[:, :, cache_len + 1 :] = False
    mask[:, 1:, cache_len + 1 :] = ancestors
    return mask[:, None]


def tree_mask_mod(bits: torch.Tensor, cache_len: int):
    """FlexAttention ``mask_mod`` of the verify mask, reading the same packed ancestor bits."""

    def mask_mod(b, h, q_idx, kv_idx):
        t = kv_idx - cache_len
        node_col = torch.clamp(t - 1, min=0)
        word = bits[b, torch.clamp(q_idx - 1, min=0), node_col // 32]
        is_ancestor = ((word >> (node_col % 32)) & 1) == 1
        return (kv_idx <= cache_len) | ((q_idx > 0) & (t > 0) & is_ancestor)

    return mask_mod


def flex_block_mask(bits: torch.Tensor, cache_len: int):
    from torch.nn.attention.flex_attention import create_block_mask

    batch, n_nodes, _ = bits.shape
    return create_block_mask(
        tree_mask_mod(bits, cache_len), batch, None, n_nodes + 1, cache_len + n_nodes + 1, device=bits.device
    )


def floor_of(q, k, bits, cache_len, ceilings) -> tuple[float, float, float]:
    """(floor ms, bytes, useful FLOPs) of one shape."""
    batch, n_q_heads, n_verify, head_dim = q.shape
    tree_pairs = int(sum(bin(w & 0xFFFFFFFF).count("1") for w in bits.flatten().tolist())) + batch * n_verify
    pairs = n_q_heads * (batch * n_verify * cache_len + tree_pairs)
    flops = 4.0 * head_dim * pairs
    nbytes = 2.0 * k.numel() * k.element_size() + 2.0 * q.numel() * q.element_size()
    floor_s = max(nbytes / ceilings["copy_bytes_per_s"], flops / ceilings["bf16_matmul_flop_per_s"])
    return floor_s * 1e3, nbytes, flops


def timed(fn) -> dict:
    try:
        t = cold_time_us(fn)
        return {"ms": t["median_us"] / 1e3, "ms_p20": t["q20_us"] / 1e3, "ms_p80": t["q80_us"] / 1e3}
    except Exception as exc:  # one failing baseline (OOM, compile error) must not end the run
        torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def run_shape(model, heads, batch, n_nodes, cache_len, ceilings, check_only, flex_attention, gen) -> dict:
    n_q_heads, n_kv_heads, head_dim = heads
    group = n_q_heads // n_kv_heads
    q, k, v, bits, lens = make_case(batch, n_q_heads, n_kv_heads, head_dim, n_nodes, cache_len, gen)
    row = {"model": model, "B": batch, "N": n_nodes, "L": cache_len, "H_q": n_q_heads, "H_kv": n_kv_heads, "D": head_dim}

    def ours():
        return tree_attention(q, k, v, None, None, bits, lens)

    # SDPA gets its K/V already expanded to the query heads (outside the timing): the
    # memory-efficient kernel that takes a dense mask has no grouped-query mode.
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    mask = dense_mask(bits, cache_len)

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask)

    expected = sdpa()
    got = ours()
    row["max_abs_err_vs_sdpa"] = (got.float() - expected.float()).abs().max().item()
    row["max_abs_sdpa"] = expected.float().abs().max().item()
    if check_only:
        return row
    block_mask = flex_block_mask(bits, cache_len)

    def flex():
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)

    row["ours"], row["sdpa_dense"] = timed(ours), timed(sdpa)
    # What an eager caller sees, Python launch overhead included.
    row["ours_eager_ms"] = do_bench(ours, quantiles=QUANTILES)[0]
    row["flex"] = timed(flex)
    if "error" in row["flex"]:
        # Inductor sometimes fails on the dynamic-shape graph it recompiled to; retry static.
        from torch.nn.attention.flex_attention import flex_attention as eager_flex

        static_flex = torch.compile(eager_flex, dynamic=False)
        retry = timed(lambda: static_flex(q, k, v, block_mask=block_mask, enable_gqa=True))
        row["flex"] = retry if "ms" in retry else {**row["flex"], "static_retry": retry["error"]}
    floor_ms, nbytes, flops = floor_of(q, k, bits, cache_len, ceilings)
    row.update(floor_ms=floor_ms, bytes=nbytes, useful_flops=flops)
    if "ms" in row["ours"]:
        ours_ms = row["ours"]["ms"]
        row["floor_fraction"] = floor_ms / ours_ms
        row["bandwidth_fraction"] = nbytes / (ours_ms * 1e-3) / ceilings["copy_bytes_per_s"]
        row["matmul_fraction"] = flops / (ours_ms * 1e-3) / ceilings["bf16_matmul_flop_per_s"]
        for base in ("sdpa_dense", "flex"):
            if "ms" in row[base]:
                row[f"speedup_vs_{base}"] = row[base]["ms"] / ours_ms
    return row


SWEEP_SHAPES = ((1, 16, 16384), (1, 64, 16384), (8, 64, 16384), (1, 1024, 4096), (8, 256, 4096))
SWEEP_BLOCKS = ((64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3))


def sweep(heads, gen) -> list[dict]:
    """Our kernel under other tile configurations and split counts on a few shapes: the
    evidence behind ``attention._pick_blocks`` / ``_pick_num_splits``."""
    n_q_heads, n_kv_heads, head_dim = heads
    picked_blocks = attention._pick_blocks
    rows = []
    try:
        for batch, n_nodes, cache_len in SWEEP_SHAPES:
            q, k, v, bits, lens = make_case(batch, n_q_heads, n_kv_heads, head_dim, n_nodes, cache_len, gen)
            for blocks in (None,) + SWEEP_BLOCKS:
                attention._pick_blocks = picked_blocks if blocks is None else (lambda _rows, b=blocks: b)
                for splits in (None, 1, 16):
                    res = timed(lambda: tree_attention(q, k, v, None, None, bits, lens, num_splits=splits))
                    rows.append({"B": batch, "N": n_nodes, "L": cache_len, "blocks": blocks, "num_splits": splits, **res})
                    print("sweep", json.dumps(rows[-1]), flush=True)
    finally:
        attention._pick_blocks = picked_blocks
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'B':>2} {'N':>5} {'L':>6} | {'ours ms':>8} {'eager ms':>8} {'sdpa ms':>8} {'flex ms':>8} {'floor ms':>8} | "
          f"{'x sdpa':>6} {'x flex':>6} {'floor%':>6} {'bw%':>5} {'mm%':>5} | {'err':>8}")
    for r in rows:
        def ms(key):
            return f"{r[key]['ms']:8.4f}" if "ms" in r.get(key, {}) else f"{'-':>8}"

        def pct(key):
            return f"{100 * r[key]:5.0f}" if key in r else f"{'-':>5}"

        def ratio(key):
            return f"{r[key]:6.2f}" if key in r else f"{'-':>6}"

        floor = f"{r['floor_ms']:8.4f}" if "floor_ms" in r else f"{'-':>8}"
        eager = f"{r['ours_eager_ms']:8.4f}" if "ours_eager_ms" in r else f"{'-':>8}"
        print(f"{r['B']:>2} {r['N']:>5} {r['L']:>6} | {ms('ours')} {eager} {ms('sdpa_dense')} {ms('flex')} {floor} | "
              f"{ratio('speedup_vs_sdpa_dense')} {ratio('speedup_vs_flex')} {pct('floor_fraction'):>6} "
              f"{pct('bandwidth_fraction')} {pct('matmul_fraction')} | {r['max_abs_err_vs_sdpa']:8.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/tree_attention_<device>.json)")
    parser.add_argument("--check", action="store_true", help="correctness against SDPA only, no timing")
    parser.add_argument("--sweep", action="store_true", help="also time other tile configs / split counts")
    parser.add_argument("--budget-s", type=float, default=160.0, help="skip the shapes left once this much wall time is spent")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_tree_attention.py needs a CUDA GPU")
    started = time.monotonic()
    device = torch.cuda.get_device_name()
    flex_attention = None
    ceilings = {}
    if not args.check:
        from torch.nn.attention.flex_attention import flex_attention as eager_flex

        # Every shape is a new graph; past the default limit dynamo would silently fall back
        # to the unfused eager flex_attention and time that instead.
        torch._dynamo.config.recompile_limit = 256
        flex_attention = torch.compile(eager_flex)
        ceilings = measure_ceilings()
        print(f"{device}: copy {ceilings['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
              f"bf16 matmul {ceilings['bf16_matmul_flop_per_s'] / 1e12:.0f} TFLOP/s", flush=True)
    gen = torch.Generator().manual_seed(0)
    rows, skipped = [], []
    for model, heads in MODELS.items():
        for n_nodes in TREE_SIZES:
            for cache_len in CACHE_LENS:
                for batch in BATCHES:
                    if time.monotonic() - started > args.budget_s:
                        skipped.append({"B": batch, "N": n_nodes, "L": cache_len})
                        continue
                    row = run_shape(model, heads, batch, n_nodes, cache_len, ceilings, args.check, flex_attention, gen)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    torch.cuda.empty_cache()
    sweep_rows = sweep(next(iter(MODELS.values())), gen) if args.sweep else []
    result = {
        "bench": "tree_attention",
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "ceilings": ceilings,
        "wall_s": time.monotonic() - started,
        "rows": rows,
        "skipped_for_budget": skipped,
        "sweep": sweep_rows,
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"tree_attention_{device.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({len(rows)} shapes, {len(skipped)} skipped, {result['wall_s']:.0f} s)")
    print_table(rows)
    bad = [r for r in rows if r["max_abs_err_vs_sdpa"] > 0.02 * max(1.0, r["max_abs_sdpa"])]
    if bad:
        raise SystemExit(f"{len(bad)} shapes disagree with SDPA: {[(r['B'], r['N'], r['L']) for r in bad]}")


if __name__ == "__main__":
    main()
