"""``DraftTree`` and ``VerifyResult`` in the layout of vLLM's DDTree verify (pull request
#42910), both ways.

vLLM verifies N + 1 tokens per request in our verify order (the root, then nodes 0 .. N - 1)
under a float32 attention bias ``[B, N + 1, N + 1]`` (0 visible, -inf not), with a fixed N per
batch, so padding nodes (past ``n_nodes``) are unreachable children of the root
(``layout.padded_verify_inputs``). Its greedy verify emits int32 rows
``[B, N + 1]``: the accepted tokens, then the bonus, then -1.

Torch ops only: nothing here reads the device or imports vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bastion_ext.integrations.layout import padded_verify_inputs, tree_from_parents
from bastion_ext.tree import DraftTree, VerifyResult


@dataclass
class VLLMTree:
    """vLLM's verify inputs for a batch of trees of capacity N.

    Attributes
    ----------
    tree_attn_bias : (B, N + 1, N + 1) float32
        0 where verify token i sees verify token j (``DraftTree.verify_visibility``), -inf
        elsewhere.
    positions : (B, N + 1) int64
        ``context_len + depth``: the root at ``context_len``, padding at ``context_len + 1``.
    draft_token_ids : (B, N) int64
        The nodes' tokens, 0 for padding (the root's token is the engine's own).
    """

    tree_attn_bias: torch.Tensor
    positions: torch.Tensor
    draft_token_ids: torch.Tensor


def to_vllm(tree: DraftTree, context_lens: torch.Tensor) -> VLLMTree:
    """The tree as vLLM's verify inputs.

    Parameters
    ----------
    tree : DraftTree
        N = ``tree.max_nodes``.
    context_lens : (B,) int64
        The root's position.

    Returns
    -------
    VLLMTree
    """
    tokens, positions = padded_verify_inputs(tree, context_lens)
    visible = tree.verify_visibility(tree.max_nodes)
    return VLLMTree(
        tree_attn_bias=torch.where(visible, 0.0, -math.inf).to(torch.float32),
        positions=positions,
        draft_token_ids=tokens,
    )


def from_vllm(
    tree_attn_bias: torch.Tensor,
    draft_token_ids: torch.Tensor,
    n_nodes: torch.Tensor,
    context_lens: torch.Tensor,
    draft_positions: int,
    scores: torch.Tensor | None = None,
) -> DraftTree:
    """vLLM's verify inputs as a ``DraftTree``, for our verify ops.

    A node's parent is the deepest other node its bias row sees; siblings come in index
    order. Nodes must be in an order where parents precede children (vLLM's proposer pops
    them from a heap, as ``build_tree`` does).

    Parameters
    ----------
    tree_attn_bias : (B, N + 1, N + 1) float32
        0 visible, -inf not.
    draft_token_ids : (B, N) int64
    n_nodes : (B,) int32
        Real nodes per request (padding rows look like children of the root, so the count
        cannot be read off the bias).
    context_lens : (B,) int64
        The root's position.
    draft_positions : int
        P of the tree.
    scores : (B, N) float32, optional
        Path log-probabilities, if the proposer kept them; default 0.

    Returns
    -------
    DraftTree
    """
    batch, n = draft_token_ids.shape
    if tuple(tree_attn_bias.shape) != (batch, n + 1, n + 1):
        raise ValueError(f"tree_attn_bias must have shape ({batch}, {n + 1}, {n + 1}), got {tuple(tree_attn_bias.shape)}")
    device = draft_token_ids.device
    columns = torch.arange(n + 1, device=device)
    real = (columns >= 1) & (columns <= n_nodes.to(torch.int64)[:, None])  # (B, N + 1)
    sees = (tree_attn_bias == 0) & real[:, None, :]  # padding is nobody's ancestor
    depth = sees.sum(-1)  # real nodes see themselves and their ancestors
    ancestors = sees & (columns[:, None] != columns)  # strict ancestors among the nodes
    deepest = torch.where(ancestors, depth[:, None, :], -1).argmax(-1)
    parents = torch.where(ancestors.any(-1), deepest, 0)  # 0: the root
    parents = torch.where(real, parents, -1)
    tokens = torch.cat([torch.zeros((batch, 1), dtype=torch.int64, device=device), draft_token_ids.to(torch.int64)], 1)
    return tree_from_parents(tokens, parents, context_lens.to(torch.int64), draft_positions, scores)


def to_vllm_output(result: VerifyResult, tree: DraftTree) -> torch.Tensor:
    """A ``VerifyResult`` as vLLM's output rows.

    Parameters
    ----------
    result : VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    tree : DraftTree
        The tree verified (N = ``tree.max_nodes``).

    Returns
    -------
    (B, N + 1) int32
        Row b: the accepted path's tokens, the bonus, then -1.
    """
    nodes = result.accepted_nodes.to(torch.int64)
    path_tokens = tree.tokens.gather(1, nodes.clamp(min=0))  # (B, P)
    width = max(tree.max_nodes + 1, nodes.shape[1] + 1)  # a path holds at most min(N, P) nodes
    steps = torch.arange(width, device=tree.device)
    accept_len = result.accept_len.to(torch.int64)[:, None]
    padded = torch.nn.functional.pad(path_tokens, (0, width - nodes.shape[1]))
    rows = torch.where(steps < accept_len, padded, torch.where(steps == accept_len, result.bonus[:, None], -1))
    return rows[:, : tree.max_nodes + 1].to(torch.int32)


def from_vllm_output(rows: torch.Tensor, tree: DraftTree) -> VerifyResult:
    """vLLM's output rows as a ``VerifyResult`` on the tree they were verified on.

    The rows hold tokens, not nodes: a node is on the path iff it and each of its ancestors
    carry the row's token at their depth, within the accepted length, and no earlier sibling
    carries the same token (the walk takes the first match; siblings in index order, as in
    ``build_tree``'s and ``from_vllm``'s trees).

    Parameters
    ----------
    rows : (B, N + 1) int32
        Accepted tokens, the bonus, then -1.
    tree : DraftTree
        The tree verified (N = ``tree.max_nodes``, P = ``tree.draft_positions``).

    Returns
    -------
    VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    """
    batch, n = tree.batch_size, tree.max_nodes
    if tuple(rows.shape) != (batch, n + 1):
        raise ValueError(f"rows must have shape ({batch}, {n + 1}), got {tuple(rows.shape)}")
    device = tree.device
    rows = rows.to(torch.int64)
    accept_len = (rows >= 0).sum(-1) - 1  # (B,)
    nodes = torch.arange(n, device=device)
    real = nodes < tree.n_nodes[:, None]
    depth = tree.depth.to(torch.int64)
    matches = real & (depth <= accept_len[:, None]) & (tree.tokens == rows.gather(1, (depth - 1).clamp(min=0)))
    same_token_sibling = (tree.parents[:, :, None] == tree.parents[:, None, :]) & (tree.tokens[:, :, None] == tree.tokens[:, None, :])
    shadowed = (same_token_sibling & real[:, None, :] & (nodes[None, :] < nodes[:, None])).any(-1)
    steps = matches & ~shadowed
    on_path = steps & ~(tree.dense_mask() & ~steps[:, None, :]).any(-1)  # every ancestor a step too
    slots = torch.where(on_path, depth - 1, tree.draft_positions)  # the path's node at depth d goes to slot d - 1
    accepted = torch.full((batch, tree.draft_positions + 1), -1, dtype=torch.int64, device=device)
    accepted = accepted.scatter(1, slots, torch.where(on_path, nodes, -1))[:, : tree.draft_positions]
    return VerifyResult(
        accepted_nodes=accepted.to(torch.int32),
        accept_len=accept_len.to(torch.int32),
        bonus=rows.gather(1, accept_len[:, None])[:, 0],
    )
