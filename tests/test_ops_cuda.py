"""The CUDA build_tree / verify_greedy / verify_sample against the CPU op (docs/ops.md).

Trees must match bit for bit (log-scores to 1e-5) on >= 1,000 random cases and on the
adversarial ones: ties, peaked/flat rows, -inf entries, P = 1, N = 1, N beyond the lattice,
several budgets in one batch, every policy and logit dtype, V = 262,144, N = 4,096, rows split
over several scan blocks, rows that defeat the scan's admission threshold. Outputs start as
junk, so an element the kernel forgets to write fails the comparison. Marked ``cuda``.
"""

import math

import pytest
import torch

from bastion_ext import ops
from tree_cases import TreeCase, assert_same_tree, assert_same_walk, random_case
from tree_op_cases import (
    describe,
    empty_tree,
    empty_walk,
    random_targets,
    run_build_tree,
    wide_case,
)

pytestmark = pytest.mark.cuda
POLICIES = ("fixed", "greedy_stop", "argmax")


def check_case(case: TreeCase, label: str = ""):
    got = run_build_tree(case, "cuda")
    assert_same_tree(got, run_build_tree(case, "cpu"), f"{label} {describe(case)}", scores_atol=1e-5)
    return got


def simple_case(logits: torch.Tensor, k: int, max_nodes: int, policy: str = "fixed", budgets=None,
                scale=None, seed: int = 0) -> TreeCase:
    """A case with budgets N (unless given), a latency table for the non-fixed policies."""
    batch = logits.shape[0]
    gen = torch.Generator().manual_seed(seed)
    latency = None
    if policy != "fixed":
        latency = 1 + torch.rand(batch, max_nodes, generator=gen).cumsum(1) * 0.01
    if budgets is None:
        budgets = torch.full((batch,), max_nodes, dtype=torch.int32)
    context = torch.randint(0, 1000, (batch,), generator=gen)
    return TreeCase(logits, k, max_nodes, policy, budgets, latency, scale, context)


def test_build_tree_random_cases():
    for seed in range(500):
        check_case(random_case(seed), f"random_case({seed})")
    for seed in range(500):
        check_case(wide_case(seed), f"wide_case({seed})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("policy", POLICIES)
def test_build_tree_large_vocab_many_slices(dtype, policy):
    # B = 1 splits each row over several scan blocks: the slice merge is exercised.
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(1, 16, 151936, generator=gen) * 3).to(dtype)
    check_case(simple_case(logits, 16, 1024, policy, budgets=torch.tensor([700], dtype=torch.int32)))


def test_build_tree_vocab_262144_bf16():
    gen = torch.Generator().manual_seed(8)
    check_case(simple_case(torch.randn(2, 4, 262144, generator=gen).to(torch.bfloat16), 64, 512))


def test_build_tree_max_capacity():
    # N = 4096 needs more than 48 KiB of dynamic shared memory: the opt-in path.
    gen = torch.Generator().manual_seed(9)
    got = check_case(simple_case(torch.randn(2, 32, 1000, generator=gen), 64, 4096))
    assert got.n_nodes.tolist() == [4096, 4096]


@pytest.mark.parametrize("order", ["ascending", "descending", "all_equal"])
def test_build_tree_adversarial_row_order(order):
    # Ascending rows admit every logit of every tile (repeated compactions of the scan buffer);
    # equal rows leave only the token id to order candidates.
    vocab = 40000
    row = {"ascending": torch.arange(vocab, dtype=torch.float32) * 1e-3,
           "descending": -torch.arange(vocab, dtype=torch.float32) * 1e-3,
           "all_equal": torch.zeros(vocab)}[order]
    check_case(simple_case(row.expand(3, 5, vocab).contiguous(), 64, 300, "argmax"), order)


@pytest.mark.parametrize(
    "positions,k,max_nodes",
    [(1, 1, 1), (1, 5, 64), (3, 2, 64), (4, 3, 1), (32, 1, 100), (2, 64, 4096)],
    ids=["P1K1N1", "P1", "beyond_lattice", "N1", "chain", "wide"],
)
def test_build_tree_shapes(positions, k, max_nodes):
    gen = torch.Generator().manual_seed(positions * 100 + k)
    logits = torch.randn(2, positions, 111, generator=gen) * 2
    for policy in POLICIES:
        check_case(simple_case(logits, k, max_nodes, policy), policy)


def test_build_tree_budgets_differ_in_batch():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(5, 8, 500, generator=gen) * 2
    budgets = torch.tensor([1, 7, 64, 200, 256], dtype=torch.int32)
    scale = torch.tensor([0.0, 0.5, 1.0, 2.0, 10.0])
    for policy in POLICIES:
        got = check_case(simple_case(logits, 8, 256, policy, budgets=budgets, scale=scale), policy)
        assert (got.n_nodes.cpu() <= budgets).all()


def test_build_tree_non_finite_request_is_padding():
    # The kernel cannot raise: a request with NaN / +inf logits, or an all -inf row, comes back
    # as n_nodes = 0 and all padding; the other requests are unaffected.
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(4, 3, 200, generator=gen)
    logits[1, 2, 17] = math.nan
    logits[2, 0, 5] = math.inf
    logits[3, 1, :] = -math.inf
    got = run_build_tree(simple_case(logits, 4, 32), "cuda")
    assert got.n_nodes.tolist()[1:] == [0, 0, 0]
    pads = {"tokens": -1, "parents": -1, "depth": 0, "positions": -1, "scores": -math.inf,
            "ancestor_bits": 0, "first_child": -1, "next_sibling": -1}
    for name, pad in pads.items():
        assert (getattr(got, name)[1:] == pad).all(), name
    want = run_build_tree(simple_case(logits[:1].clone(), 4, 32), "cpu")
    for name, w in want.tensors().items():
        torch.testing.assert_close(getattr(got, name)[:1].cpu(), w, atol=1e-5, rtol=0)


def test_verify_greedy_matches_cpu():
    gen = torch.Generator().manual_seed(21)
    for seed in range(200):
        case = wide_case(seed, max_vocab=60, max_nodes=200)
        tree = run_build_tree(case, "cpu")
        target = random_targets(tree, gen)
        want = ops.verify_greedy(tree, target, out=empty_walk(tree.batch_size, tree.draft_positions, "cpu"))
        tree_gpu = run_build_tree(case, "cuda")
        got = ops.verify_greedy(tree_gpu, target.cuda(),
                                out=empty_walk(tree.batch_size, tree.draft_positions, "cuda"))
        assert_same_walk(got, want, f"wide_case({seed})")


def test_verify_sample_matches_cpu():
    gen = torch.Generator().manual_seed(22)
    for seed in range(100):
        case = wide_case(seed, max_vocab=60, max_nodes=100)
        tree = run_build_tree(case, "cpu")
        batch, n = tree.tokens.shape
        vocab = case.draft_logits.shape[2] + (3000 if seed % 4 == 0 else 1)
        # Peaked rows with exact zeros, so that samples often land on tree tokens.
        logits = torch.randn(batch, n + 1, vocab, generator=gen) * 4
        logits[torch.rand(logits.shape, generator=gen) < 0.3] = -math.inf
        logits[..., 0] = 0.0
        probs = torch.softmax(logits, dim=-1)
        uniforms = torch.rand(batch, n + 1, generator=gen)
        want = ops.verify_sample(tree, probs, uniforms, out=empty_walk(batch, tree.draft_positions, "cpu"))
        tree_gpu = run_build_tree(case, "cuda")
        got = ops.verify_sample(tree_gpu, probs.cuda(), uniforms.cuda(),
                                out=empty_walk(batch, tree.draft_positions, "cuda"))
        assert_same_walk(got, want, f"wide_case({seed})")


def test_verify_sample_large_vocab_one_hot():
    # One-hot rows: the sample is that token whatever the uniform; V spans many scan tiles.
    batch, n, vocab = 2, 5, 151936
    hot = torch.tensor([[3, 151935, 70000, 1024, 1023, 0], [5, 6, 7, 8, 9, 10]])
    probs = torch.zeros(batch, n + 1, vocab).scatter_(2, hot.unsqueeze(-1), 1.0)
    tokens = torch.tensor([[151935, 70000, 1024, 1023, 0], [6, 7, 8, 9, 10]])
    chain = torch.tensor([[0, 1, 2, 3, 4, -1]] * batch, dtype=torch.int32)
    no_sibling = torch.full((batch, n), -1, dtype=torch.int32)
    walk = empty_walk(batch, 5, "cuda")
    torch.ops.bastion_ext.verify_sample(tokens.cuda(), chain.cuda(), no_sibling.cuda(), probs.cuda(),
                                        torch.rand(batch, n + 1).cuda(), walk.accepted_nodes,
                                        walk.accept_len, walk.bonus)
    assert walk.accept_len.tolist() == [5, 0]
    assert walk.accepted_nodes.tolist() == [[0, 1, 2, 3, 4], [-1] * 5]
    assert walk.bonus.tolist() == [0, 5]


def test_verify_greedy_corrupted_links_stay_in_bounds():
    # Backward and out-of-range links end their list instead of reading out of bounds or
    # looping (the CPU op raises on them; the kernel cannot).
    tokens = torch.tensor([[10, 11, 12, 13]]).cuda()
    first_child = torch.tensor([[0, 0, 99, -5, 1]], dtype=torch.int32).cuda()
    next_sibling = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32).cuda()
    target = torch.tensor([[10, 11, 12, 13, 14]]).cuda()
    walk = empty_walk(1, 4, "cuda")
    torch.ops.bastion_ext.verify_greedy(tokens, first_child, next_sibling, target, walk.accepted_nodes,
                                        walk.accept_len, walk.bonus)
    assert walk.accept_len.tolist() == [1]
    assert walk.accepted_nodes.tolist() == [[0, -1, -1, -1]]
    assert walk.bonus.tolist() == [11]


def test_build_tree_rejects_bad_arguments_on_cuda():
    logits = torch.randn(1, 2, 50, device="cuda")
    out = empty_tree(1, 8, 2, "cuda")
    ctx = torch.zeros(1, dtype=torch.int64, device="cuda")
    budgets = torch.full((1,), 8, dtype=torch.int32, device="cuda")

    def call(k, policy, outputs):
        torch.ops.bastion_ext.build_tree(logits, ctx, budgets, None, None, k, policy, *outputs)

    outputs = list(out.tensors().values())
    with pytest.raises(ValueError, match="k must be in"):
        call(65, 0, outputs)
    with pytest.raises(ValueError, match="latency_table is required"):
        call(4, 2, outputs)
    with pytest.raises(ValueError, match="tokens must be on the same device"):
        call(4, 0, [outputs[0].cpu(), *outputs[1:]])


def test_opcheck_cuda():
    gen = torch.Generator().manual_seed(31)
    case = simple_case(torch.randn(2, 4, 100, generator=gen), 4, 16, "argmax")
    out = empty_tree(2, 16, 4, "cuda")
    args = (case.draft_logits.cuda(), case.context_lens.cuda(), case.budgets.cuda(), case.latency_table.cuda(),
            None, case.k, 2, *out.tensors().values())
    torch.library.opcheck(torch.ops.bastion_ext.build_tree.default, args)
    tree = run_build_tree(case, "cuda")
    walk = empty_walk(2, 4, "cuda")
    links = (tree.tokens, tree.first_child, tree.next_sibling)
    outs = (walk.accepted_nodes, walk.accept_len, walk.bonus)
    torch.library.opcheck(torch.ops.bastion_ext.verify_greedy.default,
                          (*links, random_targets(tree, gen).cuda(), *outs))
    probs = torch.softmax(torch.randn(2, 17, 100, generator=gen), -1).cuda()
    torch.library.opcheck(torch.ops.bastion_ext.verify_sample.default,
                          (*links, probs, torch.rand(2, 17, generator=gen).cuda(), *outs))
