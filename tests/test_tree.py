"""DraftTree helpers: dense mask, cut, the additive 4-D mask, the printers; lazy package import."""

import subprocess
import sys

import pytest
import torch
from tree_cases import random_case

from bastion_ext import ops
from bastion_ext.reference import ancestor_mask_ref
from bastion_ext.tree import DraftTree


@pytest.mark.parametrize("seed", range(15))
def test_cut_equals_a_fixed_budget_build(seed):
    case = random_case(50_000 + seed)
    full = ops.build_tree(case.draft_logits, case.k, case.max_nodes, context_lens=case.context_lens)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, case.max_nodes + 1, (full.batch_size,), generator=gen, dtype=torch.int32)
    cut = full.cut(counts)
    want = ops.build_tree(case.draft_logits, case.k, case.max_nodes, budgets=counts, context_lens=case.context_lens)
    for name, t in want.tensors().items():
        assert torch.equal(getattr(cut, name), t), name


def test_cut_checks_its_argument():
    tree = ops.build_tree(torch.randn(2, 3, 20), 2, 8)
    with pytest.raises(ValueError, match="n_nodes"):
        tree.cut(torch.tensor([3], dtype=torch.int32))


def test_dense_mask_and_verify_visibility():
    case = random_case(4)
    tree = ops.build_tree(case.draft_logits, case.k, 40, context_lens=case.context_lens)
    dense = tree.dense_mask()
    cut = int(tree.n_nodes.max())
    sees = tree.verify_visibility(cut)
    assert sees.shape == (tree.batch_size, cut + 1, cut + 1)
    assert torch.equal(tree.dense_mask(cut), dense[:, :cut, :cut])
    for b in range(tree.batch_size):
        n = int(tree.n_nodes[b])
        assert torch.equal(dense[b, :n, :n], ancestor_mask_ref(tree.parents[b, :n].tolist()))
        assert not dense[b, n:].any() and not dense[b, :, n:].any()
        assert sees[b, :, 0].all(), "everything sees the root"
        assert torch.equal(sees[b, 1 : n + 1, 1 : n + 1], dense[b, :n, :n])
        assert not sees[b, 0, 1:].any(), "the root sees no tree node"
        padding = sees[b, n + 1 :, 1:]
        assert torch.equal(padding, torch.eye(cut + 1, dtype=torch.bool)[n + 1 :, 1:]), "padding sees the root and itself"


def test_pretty_shows_every_node_with_text_depth_and_probability():
    logits = torch.full((1, 2, 5), -10.0)
    logits[0, 0, 3] = 0.0
    logits[0, 1, 4] = 0.0
    tree = ops.build_tree(logits, 2, 4)

    class Letters:
        def decode(self, ids):
            return "".join("abcde"[i] for i in ids)

    text = tree.pretty(Letters())
    lines = text.splitlines()
    assert lines[0].startswith("root (request 0: 4 of 4 nodes")
    assert lines[1].strip().startswith("'d' (3)  depth=1 p=0.99")
    assert lines[2].startswith("    'e' (4)  depth=2")
    assert len(lines) == 5
    assert "DraftTree(batch=1, max_nodes=4" in repr(tree)
    assert "more nodes" in ops.build_tree(torch.zeros(1, 3, 8), 4, 80).pretty(max_lines=5)


def test_empty_buffers_have_the_documented_shapes():
    t = DraftTree.empty(3, 33, 5)
    assert t.ancestor_bits.shape == (3, 33, 2) and t.first_child.shape == (3, 34)
    assert t.tokens.dtype == torch.int64 and t.scores.dtype == torch.float32


def test_package_imports_without_touching_the_extension():
    code = "import sys, bastion_ext, bastion_ext.tree, bastion_ext.reference; assert 'bastion_ext._C' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
