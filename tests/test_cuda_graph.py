"""build_tree + verify_greedy captured in one CUDA graph and replayed on new inputs.

Each round's inputs are copied into static buffers before the replay, as a decoding loop
does; every replay must equal the CPU op on the same inputs. Marked ``cuda``.
"""

import random

import pytest
import torch

from bastion_ext import ops
from tree_cases import TreeCase, assert_same_tree, assert_same_walk, random_latency, random_logits
from tree_op_cases import empty_tree, empty_walk, random_targets, run_build_tree

pytestmark = pytest.mark.cuda

BATCH, POSITIONS, VOCAB, K, MAX_NODES = 3, 8, 5000, 8, 128


def round_inputs(seed: int) -> TreeCase:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    return TreeCase(
        draft_logits=random_logits(rng, gen, (BATCH, POSITIONS, VOCAB)),
        k=K,
        max_nodes=MAX_NODES,
        policy="argmax",
        budgets=torch.randint(1, MAX_NODES + 1, (BATCH,), generator=gen, dtype=torch.int32),
        latency_table=random_latency(rng, gen, BATCH, MAX_NODES),
        accept_scale=torch.rand(BATCH, generator=gen) * 2,
        context_lens=torch.randint(0, 4000, (BATCH,), generator=gen),
    )


def test_build_and_verify_replay_in_cuda_graph():
    first = round_inputs(0)
    static = {name: getattr(first, name).cuda()
              for name in ("draft_logits", "context_lens", "budgets", "latency_table", "accept_scale")}
    static["target"] = torch.zeros(BATCH, MAX_NODES + 1, dtype=torch.int64, device="cuda")
    tree = empty_tree(BATCH, MAX_NODES, POSITIONS, "cuda")
    walk = empty_walk(BATCH, POSITIONS, "cuda")

    def one_round():
        ops.build_tree(static["draft_logits"], K, MAX_NODES, policy="argmax", budgets=static["budgets"],
                       latency_table=static["latency_table"], accept_scale=static["accept_scale"],
                       context_lens=static["context_lens"], out=tree)
        ops.verify_greedy(tree, static["target"], out=walk)

    # Warm up on a side stream (first-call host work, allocator pools) before capturing.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        one_round()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        one_round()

    gen = torch.Generator().manual_seed(1)
    for replay in range(1, 6):
        case = round_inputs(replay)
        want_tree = run_build_tree(case, "cpu")
        target = random_targets(want_tree, gen)
        for name in ("draft_logits", "context_lens", "budgets", "latency_table", "accept_scale"):
            static[name].copy_(getattr(case, name))
        static["target"].copy_(target)
        graph.replay()
        torch.cuda.synchronize()
        assert_same_tree(tree, want_tree, f"replay {replay}", scores_atol=1e-5)
        want_walk = ops.verify_greedy(want_tree, target, out=empty_walk(BATCH, POSITIONS, "cpu"))
        assert_same_walk(walk, want_walk, f"replay {replay}")
