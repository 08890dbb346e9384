"""build_tree: the C++ op against the reference oracle, the tree invariants, bad inputs."""

import math

import pytest
import op_calls
import torch
from tree_cases import assert_same_tree, assert_tree_invariants, random_case

from bastion_ext import ops
from bastion_ext.reference import build_tree_ref
from bastion_ext.tree import DraftTree

CASES_PER_CHUNK = 125
CHUNKS = 9  # 1,125 random cases in all


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_matches_reference_on_random_cases(chunk):
    for seed in range(chunk * CASES_PER_CHUNK, (chunk + 1) * CASES_PER_CHUNK):
        case = random_case(seed)
        tree = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
        ref = build_tree_ref(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
        assert_same_tree(tree, ref, f"seed {seed}")


@pytest.mark.parametrize(
    ("batch", "positions", "vocab", "k", "max_nodes"),
    [
        (1, 1, 111, 5, 3),  # P = 1
        (2, 4, 111, 5, 1),  # N_max = 1
        (2, 3, 50, 2, 200),  # lattice (2 + 4 + 8 = 14 nodes) smaller than N_max
        (1, 1, 1, 1, 1),  # vocab 1
        (3, 32, 64, 64, 300),  # the maximum P and K
    ],
)
def test_matches_reference_at_the_edges(batch, positions, vocab, k, max_nodes):
    gen = torch.Generator().manual_seed(batch * 1000 + positions)
    logits = torch.randn((batch, positions, vocab), generator=gen) * 3
    budgets = torch.tensor([max_nodes - b * (max_nodes // 3) for b in range(batch)], dtype=torch.int32)
    tree = op_calls.build_tree(logits, k, max_nodes, budgets=budgets)
    assert_same_tree(tree, build_tree_ref(logits, k, max_nodes, budgets=budgets), "edge")
    assert tree.n_nodes.tolist() == [min(int(b), sum(k**d for d in range(1, positions + 1))) for b in budgets]


def test_all_equal_logits_break_ties_by_token_then_push_order():
    logits = torch.zeros((1, 2, 10))
    tree = op_calls.build_tree(logits, 3, 12)
    # Equal logits: candidates are tokens 0, 1, 2; within a depth all scores tie, so pops
    # follow push order (a node's first child is pushed before its next sibling).
    assert tree.tokens[0].tolist() == [0, 1, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert tree.parents[0].tolist() == [-1, -1, -1, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert_same_tree(tree, build_tree_ref(logits, 3, 12), "ties")


@pytest.mark.parametrize("seed", range(40))
def test_tree_invariants(seed):
    case = random_case(10_000 + seed)
    tree = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
    assert_tree_invariants(tree, case.budgets.tolist(), case.context_lens.tolist())


@pytest.mark.parametrize("seed", range(20))
def test_prefix_of_a_larger_budget_is_the_smaller_build(seed):
    case = random_case(20_000 + seed)
    logits, k = case.draft_logits, case.k
    big = op_calls.build_tree(logits, k, 64)
    for n in (1, 2, 7, 33):
        small = op_calls.build_tree(logits, k, n)
        m = small.n_nodes
        assert torch.equal(m, torch.minimum(big.n_nodes, torch.tensor(n, dtype=torch.int32)))
        for b in range(big.batch_size):
            c = int(m[b])
            for name in ("tokens", "parents", "depth", "scores"):
                assert torch.equal(getattr(small, name)[b, :c], getattr(big, name)[b, :c]), name


def test_greedy_stop_and_argmax_cut_where_the_speedup_says():
    # Scores: log(0.9), log(0.9 * 0.9), ...; T(n) grows fast, so S peaks early.
    logits = torch.tensor([[[math.log(0.9), math.log(0.1)]] * 6])
    latency = (1.0 + 0.3 * torch.arange(1, 9, dtype=torch.float32) ** 2)[None]
    scores = op_calls.build_tree(logits, 2, 8).scores[0].tolist()
    speedup, acc = [], 0.0
    for n, s in enumerate(scores, start=1):
        acc += math.exp(s)
        speedup.append((1 + acc) / float(latency[0, n - 1]))
    first_drop = next(n for n in range(1, 8) if speedup[n] < speedup[n - 1])
    for policy, want in (("greedy_stop", first_drop), ("argmax", speedup.index(max(speedup)) + 1)):
        tree = op_calls.build_tree(logits, 2, 8, policy=policy, latency_table=latency)
        assert int(tree.n_nodes[0]) == want, policy


def test_out_buffers_are_overwritten_in_full():
    case = random_case(7)
    fresh = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
    out = DraftTree.empty(fresh.batch_size, fresh.max_nodes, 1)
    for t in out.tensors().values():
        t.fill_(77)
    got = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, out=out, **case.op_kwargs())
    assert got is out and got.draft_positions == case.draft_logits.shape[1]
    assert_same_tree(got, fresh, "out=")


def test_opcheck():
    case = random_case(3)
    case.policy, case.latency_table = "argmax", torch.rand(1, case.max_nodes) + 0.5
    t = DraftTree.empty(case.draft_logits.shape[0], case.max_nodes, 1)
    args = (
        case.draft_logits, case.context_lens, case.budgets, case.latency_table, case.accept_scale, case.k, 2,
        *t.tensors().values(),
    )  # fmt: skip
    torch.library.opcheck(torch.ops.bastion_ext.build_tree.default, args)


GOOD = {"draft_logits": torch.randn(2, 4, 50), "k": 4, "max_nodes": 16}


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"draft_logits": torch.randn(4, 50)}, "draft_logits"),
        ({"draft_logits": torch.randn(2, 4, 50, dtype=torch.float64)}, "draft_logits"),
        ({"draft_logits": torch.randn(2, 33, 50)}, "draft_logits"),
        ({"draft_logits": torch.randn(2, 4, 50).index_fill(2, torch.tensor([3]), math.nan)}, "draft_logits"),
        ({"draft_logits": torch.randn(2, 4, 50).index_fill(2, torch.tensor([3]), math.inf)}, "draft_logits"),
        ({"draft_logits": torch.full((2, 4, 50), -math.inf)}, "draft_logits"),
        ({"k": 0}, "k"),
        ({"k": 51}, "k"),
        ({"k": 65, "draft_logits": torch.randn(2, 4, 100)}, "k"),
        ({"max_nodes": 0}, "max_nodes"),
        ({"max_nodes": 4097}, "max_nodes"),
        ({"policy": "best"}, "policy"),
        ({"policy": "argmax"}, "latency_table"),
        ({"budgets": torch.tensor([0, 3], dtype=torch.int32)}, "budgets"),
        ({"budgets": torch.tensor([17, 3], dtype=torch.int32)}, "budgets"),
        ({"budgets": torch.tensor([3, 3, 3], dtype=torch.int32)}, "budgets"),
        ({"budgets": torch.tensor([3, 3], dtype=torch.int64)}, "budgets"),
        ({"context_lens": torch.tensor([0, 1, 2])}, "context_lens"),
        ({"context_lens": torch.tensor([0, -1])}, "context_lens"),
        # Issue 19: these ran as k = 1, budget 8, and wrapped positions to -2**63.
        ({"k": True}, "k must be an int, got True"),
        ({"max_nodes": True}, "max_nodes must be an int"),
        ({"budgets": [8.5, 3]}, "budgets must be a tensor or a sequence of ints"),
        ({"budgets": [True, 3]}, "budgets must be a tensor or a sequence of ints"),
        ({"budgets": [2**40, 3]}, "budgets must be a tensor or a sequence of ints that fit torch.int32"),
        ({"context_lens": [2**63 - 1, 0]}, r"context_lens must be in \[0, 2\*\*62\]"),
        ({"context_lens": [2**64, 0]}, "context_lens must be a tensor or a sequence of ints"),
        ({"context_lens": 5}, "context_lens must be a tensor or a sequence of ints"),
        ({"policy": "greedy_stop", "latency_table": torch.ones(2, 15)}, "latency_table"),
        ({"policy": "greedy_stop", "latency_table": torch.ones(3, 16)}, "latency_table"),
        ({"policy": "greedy_stop", "latency_table": torch.zeros(1, 16)}, "latency_table"),
        ({"accept_scale": torch.ones(3)}, "accept_scale"),
        ({"accept_scale": torch.tensor([-1.0])}, "accept_scale"),
        ({"out": DraftTree.empty(2, 8, 4)}, "out.tokens"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(change, names):
    kwargs = {**GOOD, **change}
    with pytest.raises(ValueError, match=names):
        ops.build_tree(kwargs.pop("draft_logits"), kwargs.pop("k"), kwargs.pop("max_nodes"), **kwargs)


def test_device_mismatch_is_named():
    with pytest.raises(ValueError, match="budgets"):
        ops.build_tree(GOOD["draft_logits"], 4, 16, budgets=torch.ones(2, dtype=torch.int32, device="meta"))


def _op_args(**change):
    """Positional args of torch.ops.bastion_ext.build_tree (bypassing the wrapper's checks)."""
    logits = change.pop("draft_logits", torch.randn(2, 4, 50))
    batch, n = logits.shape[0], change.pop("max_nodes", 16)
    t = DraftTree.empty(batch, n, 1)
    args = {
        "draft_logits": logits,
        "context_lens": torch.zeros(batch, dtype=torch.int64),
        "budgets": torch.full((batch,), n, dtype=torch.int32),
        "latency_table": None,
        "accept_scale": None,
        "k": 4,
        "policy": 0,
        **t.tensors(),
    }
    args.update(change)
    return list(args.values())


# Bad arguments the op sees without reading tensor data: its fake must reject them too.
DATA_FREE_FAULTS = [
    ({"draft_logits": torch.randn(4, 50)}, r"draft_logits must be 3-D \[batch, positions, vocab\], got shape \(4, 50\)"),
    ({"draft_logits": torch.randn(2, 40, 50)}, "draft_logits positions"),
    ({"k": 0}, "k must be"),
    ({"k": 51}, "k must be"),
    ({"policy": 3}, "policy must be"),
    ({"policy": 1}, "latency_table is required"),
    ({"budgets": torch.tensor([3], dtype=torch.int32)}, "budgets must have shape"),
    ({"tokens": torch.empty(2, 16, dtype=torch.int32)}, "tokens must be Long"),
    ({"ancestor_bits": torch.empty(2, 16, 2, dtype=torch.int32)}, "ancestor_bits must have shape"),
    ({"first_child": torch.empty(2, 16, dtype=torch.int32)}, "first_child must have shape"),
    ({"n_nodes": torch.empty(3, dtype=torch.int32)}, "n_nodes must have shape"),
    ({"scores": torch.empty(16, 2).t()}, "scores must be contiguous"),
]
# Bad values: only the CPU op, which reads them, can see these.
VALUE_FAULTS = [
    ({"draft_logits": torch.randn(2, 4, 50).index_fill(2, torch.tensor([3]), math.nan)}, "draft_logits must not contain NaN"),
    ({"draft_logits": torch.full((2, 4, 50), -math.inf)}, "draft_logits has a row that is all -inf"),
    ({"budgets": torch.tensor([0, 3], dtype=torch.int32)}, "budgets must be in"),
    ({"context_lens": torch.tensor([0, -4])}, r"context_lens must be in \[0, 2\*\*62\], got -4"),
    ({"context_lens": torch.tensor([0, 2**62 + 1])}, r"context_lens must be in \[0, 2\*\*62\]"),
    ({"latency_table": torch.full((1, 16), math.nan), "policy": 2}, "latency_table must be finite"),
    ({"accept_scale": torch.tensor([-2.0])}, "accept_scale must be finite and >= 0"),
]


@pytest.mark.parametrize(("change", "names"), DATA_FREE_FAULTS + VALUE_FAULTS)
def test_bad_inputs_to_the_op_raise_naming_the_argument(change, names):
    with pytest.raises(ValueError, match=names):
        torch.ops.bastion_ext.build_tree(*_op_args(**change))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_log_probabilities_round_exactly_like_the_float64_lse(dtype):
    """Many rows across scales: the op's fp64 exp-sum (a vectorised polynomial) must give the
    same fp32 lse as torch's float64 exp and sum, i.e. identical top-1 log-probabilities."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    for scale, vocab in ((1e-3, 257), (1.0, 1000), (3.0, 4099), (30.0, 1000), (300.0, 513)):
        x = torch.randn((200, 1, vocab), generator=gen) * scale
        x[torch.rand(x.shape, generator=gen) < 0.2] = -math.inf
        x[..., 0] = scale  # never a whole row of -inf
        rows.append(x.to(dtype))
    for x in rows:
        tree = op_calls.build_tree(x, 1, 1)
        wide = x.double()
        m = wide.amax(-1)
        lse = (m + torch.log(torch.exp(wide - m[..., None]).sum(-1))).float()
        assert torch.equal(tree.scores[:, 0], (x.float().amax(-1) - lse)[:, 0])


@pytest.mark.parametrize(("change", "names"), DATA_FREE_FAULTS)
def test_the_fake_rejects_what_the_op_rejects_without_data(change, names):
    """On meta tensors the op runs its fake (bastion_ext/fakes.py): same error type, same argument."""
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in _op_args(**change)]
    argument = names.split(" ")[0]
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        torch.ops.bastion_ext.build_tree(*args)

