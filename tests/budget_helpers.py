"""Shared by the budget-policy tests: build a DraftTree with the compiled op when it is there,
else with the Python oracle (same semantics, docs/ops.md)."""

import torch

from bastion_ext.reference import build_tree_ref
from bastion_ext.tree import DraftTree


def build_tree_any(draft_logits, k, max_nodes, policy="fixed", budgets=None, latency_table=None, accept_scale=None) -> DraftTree:
    try:
        from bastion_ext.ops import build_tree
    except ImportError:
        build_tree = None
    if build_tree is not None:
        return build_tree(draft_logits, k, max_nodes, policy=policy, budgets=budgets, latency_table=latency_table, accept_scale=accept_scale)
    out = build_tree_ref(
        draft_logits,
        k,
        max_nodes,
        policy,
        budgets=budgets.tolist() if isinstance(budgets, torch.Tensor) else budgets,
        latency_table=latency_table,
        accept_scale=accept_scale.tolist() if isinstance(accept_scale, torch.Tensor) else accept_scale,
    )
    return DraftTree(**out, draft_positions=draft_logits.shape[1])


def draft_logits(batch, positions, vocab, sharpness, seed=0) -> torch.Tensor:
    """(batch, positions, vocab) fp32 logits; larger ``sharpness`` = a more peaked drafter."""
    generator = torch.Generator().manual_seed(seed)
    return sharpness * torch.randn(batch, positions, vocab, generator=generator)
