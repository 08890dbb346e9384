"""vLLM's DDTree verify layout (``bastion_ext.integrations.vllm``): the float32 tree bias,
positions and draft ids of known trees; round trips bit for bit on random trees; output rows
both ways; the padding rules; no host reads; tracing under ``torch.compile(fullgraph=True)``."""

import math

import torch
from test_integrations_sglang import (
    EAGLE_PARENTS,
    EAGLE_SEQ_LENS,
    ROUND_TRIP_SEEDS,
    eagle_tree,
    field_values,
    greedy_case,
    no_host_reads,
    random_trees,
    random_walk,
    visibility_by_hand,
)
from tree_cases import assert_same_tree, assert_same_walk

from bastion_ext import ops
from bastion_ext.integrations.layout import tree_from_parents
from bastion_ext.integrations.vllm import from_vllm, from_vllm_output, to_vllm, to_vllm_output


def test_vllm_inputs_of_the_build_tree_case():
    """SGLang's EAGLE tree in vLLM's layout: the bias is 0 exactly where the hand-walked
    visibility holds, -inf elsewhere; positions are SGLang's; ids are the drafts."""
    tree = eagle_tree()
    v = to_vllm(tree, torch.tensor(EAGLE_SEQ_LENS))
    assert v.tree_attn_bias.dtype == torch.float32 and v.tree_attn_bias.shape == (2, 8, 8)
    want = torch.tensor([visibility_by_hand(p) for p in EAGLE_PARENTS])
    assert torch.equal(v.tree_attn_bias, torch.where(want, 0.0, -math.inf))
    assert v.positions.flatten().tolist() == [5, 6, 6, 7, 7, 8, 8, 9, 10, 11, 12, 12, 12, 12, 13, 14]
    assert torch.equal(v.draft_token_ids, tree.tokens)
    assert_same_tree(from_vllm(v.tree_attn_bias, v.draft_token_ids, tree.n_nodes, torch.tensor(EAGLE_SEQ_LENS), 4), tree, "eagle")


def test_vllm_output_rows_of_the_greedy_case():
    """SGLang's greedy case as vLLM output rows: accepted tokens, the bonus, -1; and the
    rows read back as the walk."""
    tree, target_predict = greedy_case()
    result = ops.verify_greedy(tree, target_predict)
    rows = to_vllm_output(result, tree)
    assert rows.dtype == torch.int32
    assert rows.tolist() == [[3, 4, 5, 18, -1, -1], [11, 12, 18, -1, -1, -1]]
    assert_same_walk(from_vllm_output(rows, tree), result)


def test_vllm_output_rows_with_equal_sibling_tokens():
    """Two children of the root carry token 5; the walk takes the first, and so does reading
    the rows back, even where the second one's child carries the next row token."""
    tree = tree_from_parents(torch.tensor([[9, 5, 5, 7]]), torch.tensor([[-1, 0, 0, 2]]), torch.tensor([0]), 3)
    for after_five, want_path in ((3, [0, -1, -1]), (7, [0, -1, -1])):
        target_argmax = torch.tensor([[5, after_five, 0, 0]])
        result = ops.verify_greedy(tree, target_argmax)
        assert result.accepted_nodes.tolist() == [want_path]
        assert_same_walk(from_vllm_output(to_vllm_output(result, tree), tree), result)


def test_vllm_round_trips_on_random_trees():
    """Every tree -> vLLM -> tree bit for bit; every walk's output rows hold its path's
    tokens, the bonus and -1 padding, and read back as the walk."""
    trees = 0
    for seed in ROUND_TRIP_SEEDS:
        tree, context, _, gen = random_trees(seed)
        v = to_vllm(tree, context)
        back = from_vllm(v.tree_attn_bias, v.draft_token_ids, tree.n_nodes, context, tree.draft_positions, tree.scores)
        assert_same_tree(back, tree, f"seed {seed}")
        result = ops.verify_greedy(tree, random_walk(tree, gen))
        rows = to_vllm_output(result, tree)
        assert_same_walk(from_vllm_output(rows, tree), result, f"seed {seed}")
        rows = rows.tolist()
        for b, (path, length, bonus) in enumerate(zip(result.accepted_nodes.tolist(), result.accept_len.tolist(), result.bonus.tolist())):
            emitted = [tree.tokens[b, i].item() for i in path[:length]] + [bonus]
            assert rows[b] == emitted + [-1] * (tree.max_nodes + 1 - len(emitted)), f"seed {seed} request {b}"
        trees += tree.batch_size
    assert trees >= 1000


def test_vllm_padding_rules():
    """Padding nodes: token 0, position context + 1, a bias row that sees the root and
    itself; no real row sees padding."""
    tree = ops.build_tree(torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(1)), 4, 12, budgets=[1, 5, 12])
    context = torch.tensor([0, 7, 100])
    v = to_vllm(tree, context)
    visible = v.tree_attn_bias == 0
    assert (visible | (v.tree_attn_bias == -math.inf)).all()
    for b, n in enumerate(tree.n_nodes.tolist()):
        assert v.draft_token_ids[b, n:].eq(0).all()
        assert v.positions[b, 0] == context[b] and v.positions[b, n + 1:].eq(context[b] + 1).all()
        for i in range(n + 1, 13):
            assert visible[b, i].nonzero().flatten().tolist() == [0, i]
        assert not visible[b, : n + 1, n + 1:].any()


def test_vllm_conversions_read_nothing_back():
    tree, context, _, gen = random_trees(5, batch=4)
    result = ops.verify_greedy(tree, random_walk(tree, gen))
    with no_host_reads():
        v = to_vllm(tree, context)
        from_vllm(v.tree_attn_bias, v.draft_token_ids, tree.n_nodes, context, tree.draft_positions)
        from_vllm_output(to_vllm_output(result, tree), tree)


def test_vllm_conversions_trace_in_one_graph():
    """Each conversion under torch.compile(fullgraph=True) (no graph break) equals eager."""
    tree = ops.build_tree(torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(2)), 4, 13, budgets=[3, 13, 7])
    context = torch.tensor([5, 0, 9])
    result = ops.verify_greedy(tree, torch.randint(0, 20, (3, 14)))
    v = to_vllm(tree, context)
    cases = {
        "to_vllm": (lambda t, c: field_values(to_vllm(t, c)), (tree, context)),
        "from_vllm": (lambda v, n, c: tuple(from_vllm(v.tree_attn_bias, v.draft_token_ids, n, c, 4).tensors().values()),
                      (v, tree.n_nodes, context)),
        "to_vllm_output": (lambda r, t: (to_vllm_output(r, t),), (result, tree)),
        "from_vllm_output": (lambda o, t: tuple(from_vllm_output(o, t).tensors().values()), (to_vllm_output(result, tree), tree)),
    }
    for name, (fn, args) in cases.items():
        compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager")
        for g, w in zip(compiled(*args), fn(*args), strict=True):
            assert g.dtype == w.dtype and torch.equal(g, w), name
