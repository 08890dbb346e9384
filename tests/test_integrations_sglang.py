"""The SGLang layout (``bastion_ext.integrations.sglang``): SGLang's own kernel-test cases
reproduced exactly through our adapter and our ``verify_greedy``, both directions; round trips
bit for bit on random trees; the padding rules; no host reads; tracing under
``torch.compile(fullgraph=True)``; and a greedy decoding loop on the embedded model through the
layout that equals ``ar``.

The cases are data transcribed from SGLang's tests (``sgl-kernel/tests/speculative/
test_eagle_utils.py`` and ``python/sglang/srt/speculative/build_eagle_tree.py``)."""

import dataclasses
import random
from contextlib import contextmanager

import pytest
import torch
from tree_cases import assert_same_tree, assert_same_walk

from bastion_ext import ops
from bastion_ext.integrations.layout import tree_from_parents
from bastion_ext.integrations.sglang import (
    TreeMaskMode,
    from_sglang,
    from_sglang_accept,
    sglang_tree_mask,
    to_sglang,
    to_sglang_accept,
)

# SGLang's verify_tree_greedy case: bs 2, D 6, S 4 (accept_index width).
GREEDY_CANDIDATES = [[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]]
GREEDY_NEXT_TOKEN = [[1, 2, -1, 4, 5, -1], [4, 2, 3, -1, 5, -1]]
GREEDY_NEXT_SIBLING = [[-1, 3, -1, -1, -1, -1], [-1, -1, -1, -1, 1, -1]]
GREEDY_ARGMAX = {(0, 0): 3, (0, 3): 4, (0, 4): 5, (1, 0): 11, (1, 4): 12}  # every other row: 18
GREEDY_PREDICTS = [3, -1, -1, 4, 5, 18, 11, -1, -1, -1, 12, 18]
GREEDY_ACCEPT_INDEX = [[0, 3, 4, 5], [6, 10, 11, -1]]
GREEDY_ACCEPT_TOKEN_NUM = [3, 2]

# build_tree_kernel_efficient's case: bs 2, topk 4, depth 4, D 8, seq_lens [5, 10].
EAGLE_SEQ_LENS = [5, 10]
EAGLE_POSITIONS = [5, 6, 6, 7, 7, 8, 8, 9, 10, 11, 12, 12, 12, 12, 13, 14]
EAGLE_NEXT_TOKEN = [[1, 3, 4, 5, 6, 7, -1, -1], [1, 2, -1, 6, -1, -1, 7, -1]]
EAGLE_NEXT_SIBLING = [[-1, 2, -1, -1, -1, -1, -1, -1], [-1, -1, 3, 4, 5, -1, -1, -1]]
EAGLE_DRAFT_TOKENS = [[29974, 29896, 29906, 29889, 29974, 29946, 29896, 29946], [13, 13, 22550, 4136, 16492, 8439, 29871, 29941]]
# The tree those outputs describe (local index -> parent's local index, 0 the root), as
# EAGLE_SCORES select it (test_sglang_build_tree_case_parents_from_its_scores).
EAGLE_PARENTS = [[-1, 0, 0, 1, 2, 3, 4, 5], [-1, 0, 1, 1, 1, 1, 3, 6]]
EAGLE_DRAFT_POSITIONS = 4
# The case's inputs: per request, the cumulative scores of its 4 draft steps flattened
# (4 + 3 x 16 candidates), and the parents lists but the last, concatenated (13 entries).
EAGLE_SCORES = [
    [7.1127e-01, 2.8292e-01, 2.2995e-03, 1.7357e-03,
     6.9142e-01, 1.2863e-02, 1.6873e-03, 1.1871e-03, 2.4787e-01, 1.8818e-02, 1.4204e-02, 9.2235e-04,
     2.2971e-03, 1.6700e-06, 1.8737e-07, 8.3146e-08, 1.2771e-03, 2.4374e-04, 1.7832e-04, 1.1947e-05,
     6.6438e-01, 2.6997e-02, 2.4236e-05, 4.0821e-06, 2.4402e-01, 2.8409e-03, 5.0935e-04, 2.9022e-04,
     1.6178e-02, 2.0567e-03, 4.5892e-04, 3.0034e-05, 1.3023e-02, 5.0497e-04, 3.6371e-04, 8.7750e-05,
     6.6420e-01, 1.0525e-04, 6.5864e-05, 1.2253e-06, 1.3019e-01, 1.0461e-01, 5.2083e-03, 1.6777e-03,
     2.0103e-02, 6.7335e-03, 1.2625e-04, 1.0364e-05, 1.5142e-02, 7.0819e-04, 9.6595e-05, 8.7951e-05],
    [9.7476e-01, 2.2219e-02, 6.5031e-04, 1.3212e-04,
     8.4832e-02, 6.6068e-02, 5.8304e-02, 5.7851e-02, 2.3616e-03, 1.1243e-03, 5.4368e-04, 2.7768e-04,
     2.5286e-04, 1.5578e-04, 2.8817e-05, 1.2888e-05, 1.2834e-04, 2.5417e-06, 1.1279e-06, 1.6088e-08,
     2.3263e-02, 2.0054e-02, 9.3990e-03, 2.7783e-03, 6.4156e-02, 5.5506e-04, 1.0429e-04, 9.7211e-05,
     4.9950e-02, 5.0630e-03, 9.0068e-04, 3.3656e-04, 7.5817e-03, 8.5731e-04, 6.9972e-04, 6.0793e-04,
     5.8608e-02, 1.8840e-03, 7.8535e-04, 4.4400e-04, 1.2185e-02, 2.0684e-03, 1.7418e-03, 1.4327e-03,
     6.2455e-03, 6.1487e-03, 2.6862e-03, 1.8034e-03, 1.8590e-03, 1.6151e-03, 1.2481e-03, 3.6038e-04],
]  # fmt: skip
EAGLE_PARENT_LIST = [[-1, 0, 1, 2, 3, 4, 8, 9, 10, 20, 24, 21, 28], [-1, 0, 1, 2, 3, 4, 5, 6, 7, 24, 28, 20, 21]]
EAGLE_TOPK = 4


def greedy_case():
    """SGLang's hand-built trees as a DraftTree (P = S - 1 = 3) and the target's argmax."""
    target_predict = torch.full((2, 6), 18)
    for (b, i), token in GREEDY_ARGMAX.items():
        target_predict[b, i] = token
    tree = from_sglang(torch.tensor(GREEDY_CANDIDATES), torch.tensor(GREEDY_NEXT_TOKEN), torch.tensor(GREEDY_NEXT_SIBLING),
                       torch.zeros(2, dtype=torch.int64), draft_positions=3)  # fmt: skip
    return tree, target_predict


def test_sglang_greedy_case_through_our_verify():
    """SGLang's tensors -> DraftTree -> our verify_greedy -> SGLang's outputs, exactly."""
    tree, target_predict = greedy_case()
    got = to_sglang_accept(ops.verify_greedy(tree, target_predict), tree)
    assert got.predicts.dtype == got.accept_index.dtype == got.accept_token_num.dtype == torch.int32
    assert got.predicts.tolist() == GREEDY_PREDICTS
    assert got.accept_index.tolist() == GREEDY_ACCEPT_INDEX
    assert got.accept_token_num.tolist() == GREEDY_ACCEPT_TOKEN_NUM


def test_sglang_greedy_case_read_back():
    """The other direction: our tree gives back SGLang's input tensors (request 1's root lists
    its children out of index order, 4 then 1, and keeps that order), and SGLang's expected
    outputs read as a VerifyResult equal our walk's."""
    tree, target_predict = greedy_case()
    assert tree.parents.tolist() == [[-1, 0, -1, 2, 3], [-1, 0, 1, -1, 3]]
    sg = to_sglang(tree, torch.tensor([0, 7]), torch.zeros(2, dtype=torch.int64))
    assert sg.candidates.tolist() == GREEDY_CANDIDATES
    assert sg.retrive_index.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert sg.retrive_next_token.tolist() == GREEDY_NEXT_TOKEN
    assert sg.retrive_next_sibling.tolist() == GREEDY_NEXT_SIBLING
    theirs = from_sglang_accept(torch.tensor(GREEDY_PREDICTS, dtype=torch.int32), torch.tensor(GREEDY_ACCEPT_INDEX, dtype=torch.int32),
                                torch.tensor(GREEDY_ACCEPT_TOKEN_NUM, dtype=torch.int32))  # fmt: skip
    assert theirs.accepted_nodes.tolist() == [[2, 3, 4], [3, 4, -1]]
    assert theirs.bonus.tolist() == [18, 18]
    assert_same_walk(theirs, ops.verify_greedy(tree, target_predict))


def eagle_tree():
    return tree_from_parents(torch.tensor(EAGLE_DRAFT_TOKENS), torch.tensor(EAGLE_PARENTS), torch.tensor(EAGLE_SEQ_LENS),
                             EAGLE_DRAFT_POSITIONS)  # fmt: skip


def test_sglang_build_tree_case_parents_from_its_scores():
    """EAGLE_PARENTS is the tree SGLang's case selects: the D - 1 best flattened scores, in
    index order, are local indices 1 .. D - 1; a pick's parent is the pick whose flat index
    its parent-list row (flat index // topk) names, or the root for row 0."""
    scores, parent_list = torch.tensor(EAGLE_SCORES), torch.tensor(EAGLE_PARENT_LIST)
    picks = scores.topk(len(EAGLE_PARENTS[0]) - 1).indices.sort().values  # (B, D - 1)
    parent_flat = parent_list.gather(1, picks // EAGLE_TOPK)
    is_parent = picks[:, None, :] == parent_flat[:, :, None]  # [b, r, q]: pick q is pick r's parent
    local = torch.where(is_parent.any(-1), is_parent.int().argmax(-1) + 1, 0)
    assert torch.cat([torch.full((2, 1), -1), local], 1).tolist() == EAGLE_PARENTS


def test_sglang_build_tree_case_from_our_tree():
    """The EAGLE tree as a DraftTree gives build_tree_kernel_efficient's expected positions,
    retrive_index, next_token, next_sibling and draft tokens."""
    tree = eagle_tree()
    sg = to_sglang(tree, torch.tensor([row[0] for row in EAGLE_DRAFT_TOKENS]), torch.tensor(EAGLE_SEQ_LENS))
    assert sg.positions.tolist() == EAGLE_POSITIONS
    assert sg.retrive_index.tolist() == [list(range(8)), list(range(8, 16))]
    assert sg.retrive_next_token.tolist() == EAGLE_NEXT_TOKEN
    assert sg.retrive_next_sibling.tolist() == EAGLE_NEXT_SIBLING
    assert sg.candidates.tolist() == EAGLE_DRAFT_TOKENS


def test_sglang_build_tree_case_to_our_tree():
    """build_tree_kernel_efficient's expected links read back: the EAGLE parents, the depths
    its positions encode, and the same DraftTree as built from the parents."""
    tree = from_sglang(torch.tensor(EAGLE_DRAFT_TOKENS), torch.tensor(EAGLE_NEXT_TOKEN), torch.tensor(EAGLE_NEXT_SIBLING),
                       torch.tensor(EAGLE_SEQ_LENS), EAGLE_DRAFT_POSITIONS)  # fmt: skip
    assert tree.parents.tolist() == [[p - 1 if p > 0 else -1 for p in row[1:]] for row in EAGLE_PARENTS]
    assert tree.positions.flatten().tolist() == EAGLE_POSITIONS[1:8] + EAGLE_POSITIONS[9:]
    assert tree.n_nodes.tolist() == [7, 7]
    assert_same_tree(tree, eagle_tree(), "eagle")


def visibility_by_hand(parents: list[int]) -> list[list[bool]]:
    """Row i sees the root, itself and its ancestors (parents in local indices, -1 = none)."""
    d = len(parents)
    rows = []
    for i in range(d):
        seen = {0, i}
        j = i
        while parents[j] > 0:
            j = parents[j]
            seen.add(j)
        rows.append([j in seen for j in range(d)])
    return rows


def test_sglang_masks_of_the_build_tree_case():
    """All three mask layouts of the EAGLE case against visibility walked by hand: FULL with
    its prefix columns, QLEN_ONLY, and the bits of QLEN_ONLY_BITPACKING (uint8 at D = 8)."""
    tree = eagle_tree()
    seq_lens = torch.tensor(EAGLE_SEQ_LENS)
    want = [visibility_by_hand(p) for p in EAGLE_PARENTS]
    full = sglang_tree_mask(tree, TreeMaskMode.FULL_MASK, seq_lens, sum(EAGLE_SEQ_LENS)).tolist()
    want_full = [v for s, rows in zip(EAGLE_SEQ_LENS, want) for row in rows for v in [True] * s + row]
    assert full == want_full
    assert sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY).tolist() == [v for rows in want for row in rows for v in row]
    packed = sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY_BITPACKING)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [sum(1 << j for j, v in enumerate(row) if v) for rows in want for row in rows]


def random_trees(seed: int, batch: int = 32):
    """A batch of trees from build_tree on random logits, each request its own random budget
    (so sizes mix within a batch), and random context lengths and root tokens."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    max_nodes = rng.choice([1, 2, 7, 15, 31, 32, 33, 64])
    positions, vocab = rng.choice([1, 2, 3, 5, 7]), rng.choice([3, 17, 50])
    logits = torch.randn((batch, positions, vocab), generator=gen) * rng.uniform(0.3, 4.0)
    budgets = torch.randint(1, max_nodes + 1, (batch,), generator=gen, dtype=torch.int32)
    context = torch.randint(0, 1000, (batch,), generator=gen)
    tree = ops.build_tree(logits, rng.randint(1, min(vocab, 6)), max_nodes, budgets=budgets, context_lens=context)
    return tree, context, torch.randint(0, vocab, (batch,), generator=gen), gen


def random_walk(tree, gen: torch.Generator) -> torch.Tensor:
    """(B, N + 1) target argmax that mostly names a child of each verify token (its first
    child's or a sibling's token), so walks go deep, through siblings, and stop."""
    batch, n = tree.batch_size, tree.max_nodes
    child = tree.first_child.long().clamp(min=0)
    sibling = tree.next_sibling.long().gather(1, child).clamp(min=0)
    pick = torch.where(torch.rand((batch, n + 1), generator=gen) < 0.3, sibling, child)
    guess = tree.tokens.gather(1, pick)
    return torch.where(torch.rand((batch, n + 1), generator=gen) < 0.85, guess, torch.randint(0, 50, (batch, n + 1), generator=gen))


ROUND_TRIP_SEEDS = range(36)  # 36 batches of 32: 1,152 trees


def test_sglang_round_trips_on_random_trees():
    """Every tree -> SGLang -> tree bit for bit (scores passed along, as the engine keeps
    none); QLEN_ONLY equals the tree part of FULL and the bits of QLEN_ONLY_BITPACKING; every
    walk -> SGLang's outputs -> walk bit for bit, with SGLang's invariants on the way."""
    trees = 0
    for seed in ROUND_TRIP_SEEDS:
        tree, context, roots, gen = random_trees(seed)
        batch, d = tree.batch_size, tree.max_nodes + 1
        sg = to_sglang(tree, roots, context)
        back = from_sglang(sg.candidates, sg.retrive_next_token, sg.retrive_next_sibling, context, tree.draft_positions, tree.scores)
        assert_same_tree(back, tree, f"seed {seed}")

        qlen = sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY).view(batch, d, d)
        full = sglang_tree_mask(tree, TreeMaskMode.FULL_MASK, context, int(context.sum()))
        start = 0
        for b in range(batch):
            block = full[start:start + d * (int(context[b]) + d)].view(d, -1)
            assert block[:, : int(context[b])].all() and torch.equal(block[:, int(context[b]):], qlen[b]), f"seed {seed} request {b}"
            start += block.numel()
        assert start == full.numel()
        if d <= 32:
            packed = sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY_BITPACKING).to(torch.int64).view(batch, d, 1)
            assert torch.equal((packed >> torch.arange(d)) & 1 == 1, qlen), f"seed {seed}"

        result = ops.verify_greedy(tree, random_walk(tree, gen))
        accept = to_sglang_accept(result, tree)
        assert_same_walk(from_sglang_accept(accept.predicts, accept.accept_index, accept.accept_token_num), result, f"seed {seed}")
        # Exactly the root, the path and nothing else have a prediction.
        assert torch.equal((accept.predicts >= 0).view(batch, d).sum(1), result.accept_len + 1)
        trees += batch
    assert trees >= 1000


def test_sglang_padding_rules():
    """Padding nodes (past n_nodes): token 0, position seq_len + 1, no link into them or out
    of them, and a mask row that sees the root and itself; real rows never see padding."""
    tree = ops.build_tree(torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(1)), 4, 12, budgets=[1, 5, 12])
    seq_lens = torch.tensor([0, 7, 100])
    sg = to_sglang(tree, torch.tensor([3, 4, 5]), seq_lens)
    for b, n in enumerate(tree.n_nodes.tolist()):
        pad = slice(n + 1, 13)
        assert sg.candidates[b, pad].eq(0).all()
        assert sg.positions.view(3, 13)[b, pad].eq(seq_lens[b] + 1).all()
        links = torch.cat([sg.retrive_next_token[b], sg.retrive_next_sibling[b]])
        assert links.max() <= n, f"request {b}: a link into padding"
        assert sg.retrive_next_token[b, pad].eq(-1).all() and sg.retrive_next_sibling[b, pad].eq(-1).all()
    sees = sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY).view(3, 13, 13)
    packed = sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY_BITPACKING)
    assert packed.dtype == torch.uint16
    for b, n in enumerate(tree.n_nodes.tolist()):
        for i in range(n + 1, 13):
            assert sees[b, i].nonzero().flatten().tolist() == [0, i]
            assert int(packed[b * 13 + i]) == 1 | 1 << i
        assert not sees[b, : n + 1, n + 1:].any()


def test_sglang_mask_arguments():
    tree = ops.build_tree(torch.randn(1, 2, 40), 8, 32)
    with pytest.raises(ValueError, match="at most 32"):
        sglang_tree_mask(tree, TreeMaskMode.QLEN_ONLY_BITPACKING)
    with pytest.raises(ValueError, match="seq_lens_sum"):
        sglang_tree_mask(tree, TreeMaskMode.FULL_MASK, torch.tensor([3]))
    with pytest.raises(ValueError, match="root_tokens"):
        to_sglang(tree, torch.tensor([1, 2]), torch.tensor([3]))


@contextmanager
def no_host_reads():
    """Fail if a tensor's value reaches Python inside the block (every way it can: the
    conversions must not wait for the device)."""
    reads = []
    names = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counted(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return originals[name](self, *args, **kwargs)

        return read

    for name in names:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    assert not reads, f"host reads: {reads}"


def test_sglang_conversions_read_nothing_back():
    tree, context, roots, gen = random_trees(3, batch=4)
    result = ops.verify_greedy(tree, random_walk(tree, gen))
    total = int(context.sum())
    with no_host_reads():
        sg = to_sglang(tree, roots, context)
        for mode in TreeMaskMode:
            if mode != TreeMaskMode.QLEN_ONLY_BITPACKING or tree.max_nodes < 32:
                sglang_tree_mask(tree, mode, context, total)
        from_sglang(sg.candidates, sg.retrive_next_token, sg.retrive_next_sibling, context, tree.draft_positions)
        accept = to_sglang_accept(result, tree)
        from_sglang_accept(accept.predicts, accept.accept_index, accept.accept_token_num)


def field_values(value) -> tuple:
    return tuple(getattr(value, f.name) for f in dataclasses.fields(value))


def test_sglang_conversions_trace_in_one_graph():
    """Each conversion under torch.compile(fullgraph=True) (no graph break) equals eager."""
    tree = ops.build_tree(torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(2)), 4, 13, budgets=[3, 13, 7])
    context, roots = torch.tensor([5, 0, 9]), torch.tensor([1, 2, 3])
    result = ops.verify_greedy(tree, torch.randint(0, 20, (3, 14)))
    sg = to_sglang(tree, roots, context)
    accept = to_sglang_accept(result, tree)
    cases = {
        "to_sglang": (lambda t, r, c: field_values(to_sglang(t, r, c)), (tree, roots, context)),
        "full": (lambda t, c: sglang_tree_mask(t, TreeMaskMode.FULL_MASK, c, 14), (tree, context)),
        "qlen": (lambda t: sglang_tree_mask(t, TreeMaskMode.QLEN_ONLY), (tree,)),
        "bits": (lambda t: sglang_tree_mask(t, TreeMaskMode.QLEN_ONLY_BITPACKING), (tree,)),
        "from_sglang": (lambda s, c: tuple(from_sglang(s.candidates, s.retrive_next_token, s.retrive_next_sibling, c, 4).tensors().values()),
                        (sg, context)),
        "to_sglang_accept": (lambda r, t: field_values(to_sglang_accept(r, t)), (result, tree)),
        "from_sglang_accept": (lambda a: tuple(from_sglang_accept(a.predicts, a.accept_index, a.accept_token_num).tensors().values()),
                               (accept,)),
    }
    for name, (fn, args) in cases.items():
        compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend="aot_eager")
        got, want = compiled(*args), fn(*args)
        got, want = (got,) if isinstance(got, torch.Tensor) else got, (want,) if isinstance(want, torch.Tensor) else want
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and torch.equal(g, w), name


def greedy_through_sglang(model, drafter, prompts: list[list[int]], new_tokens: int, budget: int = 16, k: int = 8):
    """Greedy speculative decoding whose every round goes through SGLang's layout: our tree
    -> SGLang's tensors -> a DraftTree -> the target forward and our verify -> SGLang's accept
    outputs, which decide what is committed and emitted. Requests get different node budgets,
    so the fixed-D tensors carry padding. Returns (at least ``new_tokens`` new tokens per
    prompt, as a request that runs ahead decodes on until the slowest is done; the rounds)."""
    from bastion.engine.target import TargetCache

    device = model.device
    batch, positions = len(prompts), drafter.block_size - 1
    longest = max(map(len, prompts))
    target = TargetCache(model, batch, longest + new_tokens * (positions + 1) + budget + 2, feature_layers=drafter.target_layer_ids)
    logits, features = target.prefill(prompts)
    state = drafter.new_state(batch)
    drafter.extend(state, features, torch.arange(longest, device=device).expand(batch, longest),
                   counts=target.lengths.clone())  # fmt: skip
    roots = logits.argmax(-1)
    out = [[token] for token in roots.tolist()]
    budgets = (4 + torch.arange(batch, device=device) * 5 % (budget - 3)).to(torch.int32)
    rounds = 0
    with torch.inference_mode():
        while min(map(len, out)) < new_tokens:
            lengths = target.lengths.clone()
            target.set_bound(int(lengths.max()))
            state.set_bound(int(lengths.max()))
            tree = ops.build_tree(drafter.draft(state, roots, lengths), k, budget, budgets=budgets, context_lens=lengths)
            tree = dataclasses.replace(tree, tokens=drafter.to_target_ids(tree.tokens))
            sg = to_sglang(tree, roots, lengths)
            engine_tree = from_sglang(sg.candidates, sg.retrive_next_token, sg.retrive_next_sibling, lengths, positions)
            logits, features = target.verify(engine_tree, roots, budget)
            accept = to_sglang_accept(ops.verify_greedy(engine_tree, logits.argmax(-1)), engine_tree)
            predicts = accept.predicts.tolist()
            for b, (index, count) in enumerate(zip(accept.accept_index.tolist(), accept.accept_token_num.tolist())):
                out[b] += [predicts[i] for i in index[: count + 1]]  # the accepted tokens, then the bonus
            result = from_sglang_accept(accept.predicts, accept.accept_index, accept.accept_token_num)
            target.commit(result.accepted_nodes, result.accept_len)
            # The drafter's new context: the verify rows of the root and the accepted path.
            rows = torch.cat([torch.zeros((batch, 1), dtype=torch.int64, device=device), result.accepted_nodes.long() + 1], 1).clamp(min=0)
            features = features.gather(1, rows[..., None].expand(-1, -1, features.shape[-1]))
            drafter.extend(state, features, lengths[:, None] + torch.arange(1 + positions, device=device), counts=1 + result.accept_len.long())
            roots = result.bonus
            rounds += 1
    return out, rounds


@pytest.mark.model
def test_greedy_loop_through_the_sglang_layout_equals_ar(smollm2, eval_ar_outputs):
    """The committed drafter's trees, verified through SGLang's layout every round, give each
    held-out prompt's batch-1 ar tokens (fp32 target on the CPU), at batch 4 and batch 1."""
    from bastion.drafter import load_drafter

    from conftest import EVAL_TOKENS

    model, _ = smollm2
    drafter = load_drafter(None, model)
    cases = eval_ar_outputs
    chunks = [cases[i:i + 4] for i in range(0, len(cases) - 1, 4)] + [cases[-1:]]
    assert {len(c) for c in chunks} >= {1, 4}
    for chunk in chunks:
        outputs, rounds = greedy_through_sglang(model, drafter, [ids for ids, _ in chunk], EVAL_TOKENS)
        assert rounds < EVAL_TOKENS - 1, "the trees must have been accepted beyond their roots"
        for (_, expected), tokens in zip(chunk, outputs, strict=True):
            assert tokens[:EVAL_TOKENS] == expected[:EVAL_TOKENS]
