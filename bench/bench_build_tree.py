"""build_tree on the CPU: the C++ op vs the reference oracle vs a Python-heap builder.

Three timings per shape (B = 1, P = 16, fp32 logits ~ N(0, 3^2), seeded):

- ``cpp``: ``bastion_ext.ops.build_tree`` (top-K + lse + expansion + cut + all outputs).
- ``ref``: ``bastion_ext.reference.build_tree_ref`` (the oracle, same outputs).
- ``pyheap``: the way public tree builders do it (docs measured.md): torch ``log_softmax`` +
  ``topk``, a ``heapq`` best-first expansion on Python floats, a dense ancestor mask filled
  in a Python loop. Not bit-identical to the op (no fp32 score rounding); a speed anchor only.

And the expansion + mask part alone, from the same precomputed top-K candidates:

- ``cpp_expand``: ``bastion_ext._C.expand_from_candidates``: the op's own expansion, links and
  ancestor-bit code (the same functions build_tree calls after its top-K pass), outputs
  allocated per call.
- ``ref_expand``: ``reference.expand_lattice_ref`` + ``reference.ancestor_mask_ref`` (dense bool).
- ``pyheap_expand``: the Python-heap builder's expansion and dense mask loop.

Run (full grid, a few minutes; prints a side-by-side table and saves JSON)::

    python bench/bench_build_tree.py            # or: BENCH_QUICK=1 for P=16, V=151936, K=16, N=512
    python bench/bench_build_tree.py --benchmark-timer=time.process_time   # CPU time (busy machine)

or through pytest directly::

    pytest bench/bench_build_tree.py -s --benchmark-json=bench/results/build_tree_cpu.json
"""

from __future__ import annotations

import heapq
import math
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

from bastion_ext import _C, ops, reference

QUICK = os.environ.get("BENCH_QUICK") == "1"
POSITIONS = 16
VOCABS = [151936] if QUICK else [151936, 49152]
KS = [16] if QUICK else [8, 16, 32]
NODES = [512] if QUICK else [32, 128, 512, 1024]
RESULTS = Path(__file__).resolve().parent / "results"
MEDIANS: dict[tuple, float] = {}


def draft_logits(vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(vocab)
    return torch.randn((1, POSITIONS, vocab), generator=gen) * 3


def pyheap_candidates(logits: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    logq, tokens = torch.log_softmax(logits[0].float(), dim=-1).topk(k, dim=-1)
    return tokens.tolist(), logq.tolist()


def pyheap_expand(tokens: list[list[int]], logq: list[list[float]], max_nodes: int) -> tuple[list[int], torch.Tensor]:
    """Best-first expansion with heapq and a dense ancestor mask filled row by row."""
    positions, k = len(tokens), len(tokens[0])
    heap = [(-logq[0][0], 0, -1, 1, 0)]
    counter = 1
    node_tokens, parents, scores = [], [], []
    while heap and len(node_tokens) < max_nodes:
        neg, _, parent, depth, rank = heapq.heappop(heap)
        node = len(node_tokens)
        node_tokens.append(tokens[depth - 1][rank])
        parents.append(parent)
        scores.append(-neg)
        if depth < positions:
            heapq.heappush(heap, (neg - logq[depth][0], counter, node, depth + 1, 0))
            counter += 1
        if rank + 1 < k:
            base = 0.0 if parent < 0 else scores[parent]
            heapq.heappush(heap, (-(base + logq[depth - 1][rank + 1]), counter, parent, depth, rank + 1))
            counter += 1
    n = len(node_tokens)
    mask = torch.zeros((n, n), dtype=torch.bool)
    for i, parent in enumerate(parents):
        if parent >= 0:
            mask[i] = mask[parent]
        mask[i, i] = True
    return node_tokens, mask


def pyheap_build(logits: torch.Tensor, k: int, max_nodes: int):
    return pyheap_expand(*pyheap_candidates(logits, k), max_nodes)


def ref_candidates(logits: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    cands = [reference.topk_logprobs_ref(logits[0, p], k) for p in range(logits.shape[1])]
    return [c[0] for c in cands], [c[1] for c in cands]


def ref_expand(tokens: list[list[int]], logq: list[list[float]], max_nodes: int):
    tree = reference.expand_lattice_ref(tokens, logq, max_nodes)
    return tree, reference.ancestor_mask_ref(tree.parents)


def cpp_expand_args(tokens: list[list[int]], logq: list[list[float]], max_nodes: int) -> tuple:
    k = max(len(row) for row in tokens)
    cand_tokens = torch.tensor([row + [0] * (k - len(row)) for row in tokens], dtype=torch.int64)
    cand_logq = torch.tensor([row + [-math.inf] * (k - len(row)) for row in logq], dtype=torch.float32)
    cand_count = torch.tensor([len(row) for row in tokens], dtype=torch.int32)
    return cand_tokens, cand_logq, cand_count, max_nodes


def run(benchmark, key: tuple, fn, *args, slow: bool) -> None:
    benchmark.extra_info.update(
        {"B": 1, "P": POSITIONS, "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    )
    if slow:  # the Python builders: a few rounds are plenty at 10-1000 ms each
        benchmark.pedantic(fn, args=args, rounds=5, iterations=1, warmup_rounds=1)
    else:
        benchmark(fn, *args)
    MEDIANS[key] = benchmark.stats.stats.median


@pytest.mark.parametrize("max_nodes", NODES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("impl", ["cpp", "ref", "pyheap"])
def test_build_tree(benchmark, impl, vocab, k, max_nodes):
    benchmark.group = f"build_tree V={vocab} K={k} N={max_nodes}"
    benchmark.extra_info.update({"V": vocab, "K": k, "N": max_nodes, "part": "whole"})
    logits = draft_logits(vocab)
    if impl == "cpp":
        run(benchmark, ("whole", vocab, k, max_nodes, impl), ops.build_tree, logits, k, max_nodes, slow=False)
    elif impl == "ref":
        run(benchmark, ("whole", vocab, k, max_nodes, impl), reference.build_tree_ref, logits, k, max_nodes, slow=True)
    else:
        run(benchmark, ("whole", vocab, k, max_nodes, impl), pyheap_build, logits, k, max_nodes, slow=True)


@pytest.mark.parametrize("max_nodes", NODES)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("impl", ["cpp_expand", "ref_expand", "pyheap_expand"])
def test_expand_and_mask(benchmark, impl, k, max_nodes):
    vocab = VOCABS[0]
    benchmark.group = f"expand+mask V={vocab} K={k} N={max_nodes}"
    benchmark.extra_info.update({"V": vocab, "K": k, "N": max_nodes, "part": "expand+mask"})
    logits = draft_logits(vocab)
    key = ("expand", vocab, k, max_nodes, impl)
    if impl == "cpp_expand":
        run(benchmark, key, _C.expand_from_candidates, *cpp_expand_args(*ref_candidates(logits, k), max_nodes), slow=False)
    elif impl == "ref_expand":
        run(benchmark, key, ref_expand, *ref_candidates(logits, k), max_nodes, slow=True)
    else:
        run(benchmark, key, pyheap_expand, *pyheap_candidates(logits, k), max_nodes, slow=True)


def test_cpp_expand_matches_the_op():
    """The expansion entry point times the op's code: same tree as build_tree on those logits."""
    logits = draft_logits(VOCABS[0])
    tree = ops.build_tree(logits, KS[0], NODES[0])
    got = _C.expand_from_candidates(*cpp_expand_args(*ref_candidates(logits, KS[0]), NODES[0]))
    for want, have in zip(tree.tensors().values(), got):
        assert torch.equal(want, have)


def results_name(timer: str) -> str:
    """bench/results file stem: CPU-time runs (``--benchmark-timer=time.process_time``, robust
    to other load on a shared machine) are kept apart from wall-clock runs."""
    return "build_tree_cpu" + ("_quick" if QUICK else "") + ("_cputime" if "process_time" in timer else "")


@pytest.fixture(scope="module", autouse=True)
def side_by_side_table(request):
    """After the module: medians (ms) and ratios per shape, printed and saved as text."""
    yield
    timer = str(request.config.getoption("benchmark_timer"))
    lines = [f"build_tree CPU, B=1 P={POSITIONS} fp32, timer {timer}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.platform()}"]
    lines.append(f"{'part':<12}{'V':>8}{'K':>4}{'N':>6}{'C++ ms':>10}{'ref ms':>10}{'ref/C++':>9}{'pyheap ms':>11}{'pyheap/C++':>11}")
    for part, names in (("whole", ("cpp", "ref", "pyheap")), ("expand", ("cpp_expand", "ref_expand", "pyheap_expand"))):
        for vocab in VOCABS:
            for k in KS:
                for n in NODES:
                    t = [MEDIANS.get((part, vocab, k, n, name)) for name in names]
                    if None in t:
                        continue
                    ms = [x * 1e3 for x in t]
                    lines.append(
                        f"{part:<12}{vocab:>8}{k:>4}{n:>6}{ms[0]:>10.3f}{ms[1]:>10.2f}{t[1] / t[0]:>8.1f}x{ms[2]:>11.2f}{t[2] / t[0]:>10.1f}x"
                    )
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{results_name(timer)}.txt").write_text(text + "\n")


if __name__ == "__main__":
    name = results_name(" ".join(sys.argv[1:]))
    sys.exit(pytest.main([__file__, "-s", "-q", "-p", "no:cacheprovider", f"--benchmark-json={RESULTS / name}.json", *sys.argv[1:]]))
