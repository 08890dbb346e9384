"""verify_greedy / verify_sample: the C++ walk against the reference, exact hand-built cases,
corrupted links, bad inputs, opcheck."""

import math

import pytest
import op_calls
import torch
from tree_cases import assert_same_walk, random_case

from bastion_ext import ops
from bastion_ext.reference import verify_greedy_ref, verify_sample_ref
from bastion_ext.tree import DraftTree, VerifyResult


def targets_along_a_path(tree: DraftTree, gen: torch.Generator, vocab: int) -> torch.Tensor:
    """Target argmax that follows a random root-to-node path of each tree for a random number
    of steps, then goes random: so walks of every length occur."""
    batch, n_max = tree.batch_size, tree.max_nodes
    target = torch.randint(0, vocab, (batch, n_max + 1), generator=gen)
    for b in range(batch):
        n = int(tree.n_nodes[b])
        node = int(torch.randint(0, n, (1,), generator=gen))
        while node >= 0:  # make every ancestor's target point at the path's next token
            parent = int(tree.parents[b, node])
            target[b, parent + 1] = tree.tokens[b, node]
            node = parent
    return target


@pytest.mark.parametrize("chunk", range(4))
def test_verify_greedy_matches_reference(chunk):
    gen = torch.Generator().manual_seed(chunk)
    for seed in range(chunk * 50, (chunk + 1) * 50):
        case = random_case(30_000 + seed)
        tree = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
        target = targets_along_a_path(tree, gen, case.draft_logits.shape[2])
        got = op_calls.verify_greedy(tree, target)
        assert_same_walk(got, verify_greedy_ref(tree, target), f"seed {seed}")


def test_verify_greedy_from_logits_equals_from_argmax():
    case = random_case(11)
    tree = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
    logits = torch.randn(tree.batch_size, tree.max_nodes + 1, 40)
    a = op_calls.verify_greedy(tree, target_logits=logits)
    b = op_calls.verify_greedy(tree, logits.argmax(-1))
    assert torch.equal(a.accepted_nodes, b.accepted_nodes) and torch.equal(a.bonus, b.bonus)


def test_verify_greedy_hand_built_chain():
    # One position per depth with a single candidate: the tree is the chain 7 -> 8 -> 9.
    logits = torch.full((1, 3, 10), -float("inf"))
    logits[0, [0, 1, 2], [7, 8, 9]] = 0.0
    tree = op_calls.build_tree(logits, 1, 4)
    assert tree.tokens[0].tolist() == [7, 8, 9, -1]
    full = op_calls.verify_greedy(tree, torch.tensor([[7, 8, 9, 5, 0]]))
    assert full.accepted_nodes.tolist() == [[0, 1, 2]] and full.accept_len.tolist() == [3]
    assert full.bonus.tolist() == [5]
    half = op_calls.verify_greedy(tree, torch.tensor([[7, 3, 9, 5, 0]]))
    assert half.accepted_nodes.tolist() == [[0, -1, -1]] and half.accept_len.tolist() == [1]
    assert half.bonus.tolist() == [3]


def random_probs(gen: torch.Generator, batch: int, rows: int, vocab: int) -> torch.Tensor:
    """Peaked rows with exact zeros, normalised in fp32."""
    p = torch.softmax(torch.randn(batch, rows, vocab, generator=gen) * 3, -1)
    p = p * (torch.rand(batch, rows, vocab, generator=gen) > 0.3)
    p[..., 0] += 1e-3  # at least one positive entry per row
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("chunk", range(3))
def test_verify_sample_matches_reference(chunk):
    gen = torch.Generator().manual_seed(100 + chunk)
    for seed in range(chunk * 30, (chunk + 1) * 30):
        case = random_case(40_000 + seed)
        tree = op_calls.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
        vocab = case.draft_logits.shape[2]
        probs = random_probs(gen, tree.batch_size, tree.max_nodes + 1, vocab)
        # Bias the target toward the draft so that walks go deep.
        probs.scatter_add_(2, torch.cat([tree.tokens.clamp(min=0), tree.tokens[:, :1].clamp(min=0)], 1)[..., None], torch.full((tree.batch_size, tree.max_nodes + 1, 1), 3.0))
        probs = probs / probs.sum(-1, keepdim=True)
        uniforms = torch.rand(tree.batch_size, tree.max_nodes + 1, generator=gen)
        got = op_calls.verify_sample(tree, probs, uniforms)
        assert_same_walk(got, verify_sample_ref(tree, probs, uniforms), f"seed {seed}")


def test_verify_sample_one_hot_is_exact_and_uniform_edges_clamp():
    logits = torch.zeros((1, 2, 4))
    tree = op_calls.build_tree(logits, 2, 6)  # depth 1: tokens 0, 1; depth 2 under each: 0, 1
    probs = torch.zeros(1, 7, 4)
    probs[0, :, 1] = 1.0  # the target always says token 1
    result = op_calls.verify_sample(tree, probs, torch.rand(1, 7))
    assert result.accept_len.tolist() == [2] and result.bonus.tolist() == [1]
    # u just below 1 with a cumsum that ends below it (round-off, within the sum's tolerance)
    # must clamp to the last positive token.
    probs = torch.zeros(1, 7, 4)
    probs[0, :, :3] = torch.tensor([0.3, 0.3, 0.3995])
    result = op_calls.verify_sample(tree, probs, torch.full((1, 7), 0.9999999))
    assert result.bonus.tolist() == [2] and result.accept_len.tolist() == [0]


def test_sample_frequencies_follow_the_target():
    # With a tree that never matches, the bonus token is a sample of the root's distribution.
    logits = torch.zeros((1, 1, 6))
    logits[0, 0, 5] = 10.0
    tree = op_calls.build_tree(logits, 1, 1)  # one node, token 5
    target = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    draws = 4000
    probs = target.expand(draws, 2, 6).contiguous()
    result = op_calls.verify_sample(DraftTree(**{k: v.expand(draws, *v.shape[1:]).contiguous() for k, v in tree.tensors().items()}, draft_positions=1), probs, torch.rand(draws, 2, generator=gen))
    freq = torch.bincount(result.bonus, minlength=6).float() / draws
    assert (result.accept_len == 0).all()
    assert torch.allclose(freq, target, atol=0.03), freq


def corrupt(tree: DraftTree, name: str, index: tuple[int, int], value: int) -> DraftTree:
    t = tree.tensors()
    t[name] = t[name].clone()
    t[name][index] = value
    return DraftTree(**t, draft_positions=tree.draft_positions)


@pytest.mark.parametrize(
    ("name", "index", "value"),
    [
        ("first_child", (0, 0), 99),  # out of bounds
        ("first_child", (0, 0), -5),
        ("first_child", (0, 3), 0),  # node 2's first child points backwards (a cycle)
        ("next_sibling", (0, 0), 1000),
        ("next_sibling", (0, 1), 1),  # self loop
    ],
)
def test_corrupted_links_raise_instead_of_reading_out_of_bounds(name, index, value):
    logits = torch.zeros((1, 3, 4))
    tree = ops.build_tree(logits, 3, 12)  # depth 1: nodes 0, 1, 2 with tokens 0, 1, 2
    # The root's target is token 2 (its last child, so the walk scans all siblings), then 3,
    # which matches nothing: the walk scans node 2's children too.
    target = torch.full((1, 13), 3)
    target[0, 0] = 2
    assert ops.verify_greedy(tree, target).accepted_nodes[0, 0] == 2
    with pytest.raises(ValueError, match=f"{name} holds an invalid link"):
        ops.verify_greedy(corrupt(tree, name, index, value), target)


def test_out_is_used_and_opcheck():
    case = random_case(5)
    tree = ops.build_tree(case.draft_logits, case.k, case.max_nodes, **case.op_kwargs())
    out = VerifyResult.empty(tree.batch_size, tree.draft_positions)
    target = torch.zeros(tree.batch_size, tree.max_nodes + 1, dtype=torch.int64)
    assert ops.verify_greedy(tree, target, out=out) is out
    torch.library.opcheck(
        torch.ops.bastion_ext.verify_greedy.default,
        (tree.tokens, tree.first_child, tree.next_sibling, target, out.accepted_nodes, out.accept_len, out.bonus),
    )
    probs = torch.full((tree.batch_size, tree.max_nodes + 1, 7), 1 / 7)
    uniforms = torch.rand(tree.batch_size, tree.max_nodes + 1)
    torch.library.opcheck(
        torch.ops.bastion_ext.verify_sample.default,
        (tree.tokens, tree.first_child, tree.next_sibling, probs, uniforms, out.accepted_nodes, out.accept_len, out.bonus),
    )


def test_bad_inputs_name_the_argument():
    tree = ops.build_tree(torch.randn(2, 3, 20), 2, 8)
    with pytest.raises(ValueError, match="target_argmax"):
        ops.verify_greedy(tree, torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="target_argmax"):
        ops.verify_greedy(tree, torch.zeros(2, 9, dtype=torch.int32))
    with pytest.raises(ValueError, match="target_logits"):
        ops.verify_greedy(tree, target_logits=torch.zeros(3, 9, 5))
    with pytest.raises(ValueError, match="exactly one"):
        ops.verify_greedy(tree)
    with pytest.raises(ValueError, match="target_probs"):
        ops.verify_sample(tree, torch.zeros(2, 9, 5, dtype=torch.float64), torch.rand(2, 9))
    with pytest.raises(ValueError, match="uniforms"):
        ops.verify_sample(tree, torch.full((2, 9, 5), 0.2), torch.rand(2, 8))
    with pytest.raises(ValueError, match="uniforms"):
        ops.verify_sample(tree, torch.full((2, 9, 5), 0.2), torch.full((2, 9), 1.0))
    with pytest.raises(ValueError, match="out.accepted_nodes"):
        ops.verify_greedy(tree, torch.zeros(2, 9, dtype=torch.int64), out=VerifyResult.empty(2, 4))
    # The C++ checks, bypassing the wrapper.
    out = VerifyResult.empty(2, 3)
    with pytest.raises(ValueError, match=r"target_argmax must have shape \[batch, max_nodes \+ 1\]"):
        torch.ops.bastion_ext.verify_greedy(tree.tokens, tree.first_child, tree.next_sibling, torch.zeros(2, 8, dtype=torch.int64), out.accepted_nodes, out.accept_len, out.bonus)
    with pytest.raises(ValueError, match="first_child must have shape"):
        torch.ops.bastion_ext.verify_greedy(tree.tokens, tree.next_sibling, tree.next_sibling, torch.zeros(2, 9, dtype=torch.int64), out.accepted_nodes, out.accept_len, out.bonus)
    with pytest.raises(ValueError, match="bonus must be Long"):
        torch.ops.bastion_ext.verify_greedy(tree.tokens, tree.first_child, tree.next_sibling, torch.zeros(2, 9, dtype=torch.int64), out.accepted_nodes, out.accept_len, out.accept_len)
    with pytest.raises(ValueError, match="target_probs has a row with no positive probability"):
        torch.ops.bastion_ext.verify_sample(tree.tokens, tree.first_child, tree.next_sibling, torch.zeros(2, 9, 5), torch.rand(2, 9), out.accepted_nodes, out.accept_len, out.bonus)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        torch.ops.bastion_ext.verify_sample(tree.tokens, tree.first_child, tree.next_sibling, torch.full((2, 9, 5), 0.2), torch.rand(2, 8), out.accepted_nodes, out.accept_len, out.bonus)


def _row_with(values):
    """(1, 5, 4) probabilities: uniform rows, the root's row replaced by ``values``."""
    probs = torch.full((1, 5, 4), 0.25)
    probs[0, 0] = torch.tensor(values)
    return probs


@pytest.mark.parametrize(("target", "message"), [
    (lambda: ("greedy", torch.full((1, 5), -7)), "target_argmax must hold token ids >= 0, got -7 \\(batch 0, verify index 0\\)"),
    (lambda: ("sample", _row_with([0.5, 0.5, 0.5, 0.5])), "target_probs rows must sum to 1 \\(within 0.001\\), got 2"),
    (lambda: ("sample", _row_with([0.125, 0.125, 0.125, 0.125])), "target_probs rows must sum to 1"),
    (lambda: ("sample", _row_with([0.01, 0.0, 0.0, 0.0])), "target_probs rows must sum to 1"),
    (lambda: ("sample", _row_with([1.5, -0.5, 0.0, 0.0])), "target_probs must be finite and >= 0, got -0.5 \\(batch 0, verify index 0, token 1\\)"),
    (lambda: ("sample", _row_with([0.5, math.nan, 0.5, 0.0])), "target_probs must be finite and >= 0, got nan"),
    (lambda: ("sample", _row_with([math.inf, 0.0, 0.0, 0.0])), "target_probs must be finite and >= 0, got inf"),
], ids=["argmax-negative", "sum-2", "sum-0.5", "sum-0.01", "negative", "nan", "inf"])
def test_bad_target_values_are_rejected_on_the_cpu(target, message):
    """Issue 19: these came back as a bonus token (-7, or the last token for a NaN row)."""
    tree = ops.build_tree(torch.zeros((1, 2, 4)), 2, 4)
    kind, values = target()
    with pytest.raises(ValueError, match=message):
        if kind == "greedy":
            ops.verify_greedy(tree, values)
        else:
            ops.verify_sample(tree, values, torch.full((1, 5), 0.5))


def test_only_visited_rows_are_checked():
    """Rows past the walk are never read (the engine leaves them zero past a round's width)."""
    tree = ops.build_tree(torch.zeros((1, 1, 4)), 1, 3)  # one node: token 0, verify rows 0 and 1
    probs = torch.zeros((1, 4, 4))
    probs[0, 0, 3] = 1.0  # the root's target is token 3: no match, row 1 is never visited
    result = ops.verify_sample(tree, probs, torch.full((1, 4), 0.5))
    assert result.accept_len.tolist() == [0] and result.bonus.tolist() == [3]
    target = torch.tensor([[3, -1, -1, -1]])
    assert ops.verify_greedy(tree, target).bonus.tolist() == [3]


def test_the_fakes_reject_what_the_ops_reject_without_data():
    """On meta tensors the ops run their fakes (bastion_ext/fakes.py): ValueError naming the argument."""
    tree = ops.build_tree(torch.randn(2, 3, 20), 2, 8)
    out = VerifyResult.empty(2, 3)
    meta = lambda *ts: [t.to("meta") for t in ts]  # noqa: E731
    links = meta(tree.tokens, tree.first_child, tree.next_sibling)
    outs = meta(out.accepted_nodes, out.accept_len, out.bonus)
    faults = [
        ("target_argmax", lambda: torch.ops.bastion_ext.verify_greedy(*links, *meta(torch.zeros(2, 8, dtype=torch.int64)), *outs)),
        ("target_argmax", lambda: torch.ops.bastion_ext.verify_greedy(*links, *meta(torch.zeros(2, 9, dtype=torch.int32)), *outs)),
        ("first_child", lambda: torch.ops.bastion_ext.verify_greedy(links[0], links[2], links[2], *meta(torch.zeros(2, 9, dtype=torch.int64)), *outs)),
        ("bonus", lambda: torch.ops.bastion_ext.verify_greedy(*links, *meta(torch.zeros(2, 9, dtype=torch.int64)), outs[0], outs[1], outs[1])),
        ("target_probs", lambda: torch.ops.bastion_ext.verify_sample(*links, *meta(torch.zeros(2, 9, 5, dtype=torch.float64), torch.rand(2, 9)), *outs)),
        ("uniforms", lambda: torch.ops.bastion_ext.verify_sample(*links, *meta(torch.full((2, 9, 5), 0.2), torch.rand(2, 8)), *outs)),
    ]
    for argument, call in faults:
        with pytest.raises(ValueError, match=rf"^{argument}\b"):
            call()
    # And the well-formed call passes the fake.
    torch.ops.bastion_ext.verify_greedy(*links, *meta(torch.zeros(2, 9, dtype=torch.int64)), *outs)
