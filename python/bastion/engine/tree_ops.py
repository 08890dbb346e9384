"""The round's acceptance on buffers allocated once per batch size: the target's choice at
every verify token (argmax, or probabilities and uniforms), then ``bastion_ext``'s walk."""

from __future__ import annotations

import torch
from bastion_ext import ops
from bastion_ext.tree import DraftTree, VerifyResult


class RoundBuffers:
    """The tensors every round writes: the trees (``build_tree``'s ``out=``), the walk's result
    and the target's choices, for ``batch`` requests, trees of capacity ``max_nodes`` from
    ``positions`` draft positions. ``vocab``: allocate the probabilities of sampling (T > 0)."""

    def __init__(self, batch: int, max_nodes: int, positions: int, device, vocab: int | None = None):
        self.tree = DraftTree.empty(batch, max_nodes, positions, device)
        self.result = VerifyResult.empty(batch, positions, device)
        # Rows past a round's verify width are never visited by the walk; zeros keep them valid.
        self.target_argmax = torch.zeros((batch, max_nodes + 1), dtype=torch.int64, device=device)
        self.target_probs = None if vocab is None else torch.zeros((batch, max_nodes + 1, vocab), device=device)
        self.uniforms = torch.zeros((batch, max_nodes + 1), device=device)


def accept(tree: DraftTree, n: int, target_logits: torch.Tensor, sampler, buffers: RoundBuffers,
           requests: torch.Tensor, root_positions: torch.Tensor) -> VerifyResult:
    """The acceptance walk over one verify forward: greedy at temperature 0, otherwise
    lossless sample-and-match with the sampler's uniforms.

    target_logits: (B, n + 1, V) fp32 in verify indexing (0 = root, i + 1 = node i).
    requests: (B,) int64 request indices; root_positions: (B,) int64 absolute positions of
    the roots (the tree's ``context_lens``). Verify token j samples the token one position
    after its own, so every node at depth d takes the uniform of position root + d, the one
    ``ar`` draws for that token: sample-and-match then emits exactly ``ar``'s tokens.
    Returns ``buffers.result`` (accepted_nodes (B, P), accept_len (B,), bonus (B,)).
    """
    if sampler.greedy:
        buffers.target_argmax[:, : n + 1] = target_logits.argmax(-1)
        return ops.verify_greedy(tree, buffers.target_argmax, out=buffers.result)
    buffers.target_probs[:, : n + 1] = sampler.probs(target_logits)
    positions = torch.cat([root_positions[:, None], tree.positions[:, :n]], 1) + 1
    buffers.uniforms[:, : n + 1] = sampler.uniforms(requests, positions)
    return ops.verify_sample(tree, buffers.target_probs, buffers.uniforms, out=buffers.result)
