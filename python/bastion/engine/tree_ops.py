"""The tree ops as the loop uses them for one request: build, verify mask, acceptance walk
(``bastion_ext.ops``, whose semantics docs/ops.md fixes)."""

from __future__ import annotations

import torch

from bastion_ext import ops


def build_tree(draft_logits: torch.Tensor, k: int, max_nodes: int, context_len: int, **policy_kwargs):
    """One request's tree: ``bastion_ext.ops.build_tree`` with ``context_lens = [context_len]``.

    draft_logits: (1, P, V) float. policy_kwargs: ``policy``, ``budgets`` (1,) int32,
    ``latency_table`` (1, max_nodes) fp32, ``accept_scale`` (1,) fp32 (docs/ops.md).
    Returns a ``bastion_ext.tree.DraftTree``.
    """
    context_lens = torch.tensor([context_len], dtype=torch.long, device=draft_logits.device)
    return ops.build_tree(draft_logits, k, max_nodes, context_lens=context_lens, **policy_kwargs)


def verify_mask(tree, n: int) -> torch.Tensor:
    """(n + 1, n + 1) bool over [root, node 0..n-1] of request 0: everything sees the root;
    a node sees its ancestors and itself; the root sees only itself. Only the first n nodes
    are verified, so the mask is cut there rather than spanning the tree's capacity."""
    mask = torch.zeros((n + 1, n + 1), dtype=torch.bool, device=tree.device)
    mask[:, 0] = True
    mask[1:, 1:] = tree.dense_mask()[0, :n, :n]
    return mask


def accept(tree, n: int, target_logits: torch.Tensor, sampler) -> tuple[list[int], int]:
    """The acceptance walk over one verify forward: greedy at temperature 0, otherwise
    lossless sample-and-match with the sampler's uniforms.

    target_logits: (1, n + 1, V) fp32 in verify indexing (0 = root, i + 1 = node i).
    sampler: a :class:`bastion.engine.sampling.Sampler`.
    Returns (accepted node indices along the path, the bonus token).
    """
    capacity = tree.max_nodes
    device = target_logits.device
    if sampler.greedy:
        # Rows past the cut are never visited; any token keeps the tensor well-formed.
        target = torch.zeros((1, capacity + 1), dtype=torch.long, device=device)
        target[:, : n + 1] = target_logits.argmax(-1)
        result = ops.verify_greedy(tree, target)
    else:
        probs = torch.zeros((1, capacity + 1, target_logits.shape[-1]), device=device)
        probs[:, n + 1:, 0] = 1.0
        probs[:, : n + 1] = sampler.probs(target_logits)
        uniforms = sampler.uniforms(capacity + 1).to(device)[None]
        result = ops.verify_sample(tree, probs, uniforms)
    length = int(result.accept_len[0])
    return result.accepted_nodes[0, :length].tolist(), int(result.bonus[0])
