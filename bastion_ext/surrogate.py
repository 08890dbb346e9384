"""The acceptance surrogate: expected accepted length from path scores, its online calibration
against realized acceptance, and the realized accepted length of any tree on a recorded round."""

from __future__ import annotations

import torch

from bastion_ext.tree import DraftTree


def surrogate_prefix(scores: torch.Tensor) -> torch.Tensor:
    """A(n) = sum of the first n path probabilities, for every budget n.

    Parameters
    ----------
    scores : (B, N) float32
        Log path scores in pop order, -inf past the tree.

    Returns
    -------
    prefix : (B, N) float32
        Column n - 1 holds A(n); each exp in float64 rounded to fp32 and the sum accumulated
        in fp32, as build_tree computes it (docs/ops.md step 3).
    """
    # Shape only: a value check would sync with the device every round (build_tree already
    # guarantees finite-or--inf scores).
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [batch, nodes], got shape {tuple(scores.shape)}")
    return torch.cumsum(torch.exp(scores.double()).float(), dim=1)


def surrogate_accept(scores: torch.Tensor, n_nodes: torch.Tensor) -> torch.Tensor:
    """A(n_nodes): the uncalibrated expected number of accepted draft tokens of each tree.

    Parameters
    ----------
    scores : (B, N) float32
        Log path scores in pop order, -inf past the tree.
    n_nodes : (B,) int32 or int64
        The cut of each tree, 0..N (0: a request that verifies only its root this round).

    Returns
    -------
    accept : (B,) float32
        0 where ``n_nodes`` is 0.
    """
    index = (n_nodes.long() - 1).clamp(min=0)[:, None]
    return torch.where(n_nodes > 0, surrogate_prefix(scores).gather(1, index)[:, 0], 0.0)


class AcceptCalibrator:
    """Online calibration of the drafter's confidence: accept_scale = realized / predicted.

    Both sides are exponentially weighted sums over rounds (a ratio of sums, steadier than a
    mean of per-round ratios when single rounds accept 0), one per request slot, starting from
    ``prior`` tokens on each side so that the scale starts at 1. Updated with tensor ops only.
    """

    def __init__(self, batch: int = 1, decay: float = 0.9, prior: float = 1.0, bounds: tuple[float, float] = (0.05, 20.0), device="cpu"):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not prior > 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        if not 0 < bounds[0] <= 1.0 <= bounds[1]:
            raise ValueError(f"bounds must satisfy 0 < low <= 1 <= high, got {bounds}")
        self.decay, self.prior, self.bounds = decay, prior, bounds
        self._realized = torch.full((batch,), prior, dtype=torch.float32, device=device)
        self._predicted = torch.full((batch,), prior, dtype=torch.float32, device=device)

    @property
    def scale(self) -> torch.Tensor:
        """(batch,) fp32: the ``accept_scale`` for build_tree."""
        return (self._realized / self._predicted).clamp(*self.bounds)

    def observe(self, predicted: torch.Tensor, realized: torch.Tensor, drafted: torch.Tensor | None = None) -> None:
        """One round: predicted (B,) fp32 uncalibrated A of the verified trees (surrogate_accept),
        realized (B,) accepted draft tokens (int or float). drafted: (B,) bool on their device,
        the requests that verified a tree (None: all); the others' history stays as it was, so
        a run of plain steps does not decay it away."""
        if predicted.shape != self._predicted.shape or realized.shape != self._predicted.shape:
            raise ValueError(
                f"predicted and realized must have shape {tuple(self._predicted.shape)}, "
                f"got {tuple(predicted.shape)} and {tuple(realized.shape)}"
            )
        new_realized = self._realized * self.decay + realized.float()
        new_predicted = self._predicted * self.decay + predicted.float()
        if drafted is not None:
            new_realized = torch.where(drafted, new_realized, self._realized)
            new_predicted = torch.where(drafted, new_predicted, self._predicted)
        self._realized, self._predicted = new_realized, new_predicted

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the request slots ``rows`` (int64 indices, in the new order), e.g. when
        finished requests leave a batch."""
        self._realized = self._realized.index_select(0, rows)
        self._predicted = self._predicted.index_select(0, rows)

    def reset(self, slots: torch.Tensor) -> None:
        """Forget the history of the slots in ``slots`` ((B,) bool), e.g. when a new request takes them."""
        self._realized.masked_fill_(slots, self.prior)
        self._predicted.masked_fill_(slots, self.prior)


def realized_accept_prefix(target_tokens: torch.Tensor, tree: DraftTree) -> torch.Tensor:
    """Accepted draft tokens for every budget n, given the target's true continuation.

    Parameters
    ----------
    target_tokens : (B, P) int64
        The target's greedy tokens at depths 1..P along the true continuation. The walk only
        ever visits nodes on that path, so these are all the target outputs it reads.
    tree : DraftTree
        Reads ``tokens`` (B, N) int64, ``parents`` (B, N) int32 and ``depth`` (B, N) int32.

    Returns
    -------
    accepted : (B, N) int32
        Column n - 1 holds the accepted length of the tree's first n nodes (a prefix of the
        pop order is the tree of budget n).
    """
    tokens, parents, depth = tree.tokens, tree.parents.long(), tree.depth.long()
    if target_tokens.dim() != 2 or target_tokens.shape[0] != tokens.shape[0]:
        raise ValueError(f"target_tokens must be (batch={tokens.shape[0]}, positions), got shape {tuple(target_tokens.shape)}")
    positions = target_tokens.shape[1]
    if bool((depth > positions).any()):
        raise ValueError(f"target_tokens has {positions} positions but the tree is deeper")
    want = target_tokens.gather(1, (depth - 1).clamp(min=0))
    matches = (tokens == want) & (depth > 0)
    # A node is on the true path iff it matches and so does its parent; depth d settles after d sweeps.
    on_path = matches & (parents < 0)
    for _ in range(positions - 1):
        on_path = matches & ((parents < 0) | on_path.gather(1, parents.clamp(min=0)))
    return torch.cummax(torch.where(on_path, depth, 0), dim=1).values.int()


def realized_accept_len(target_tokens: torch.Tensor, tree: DraftTree) -> torch.Tensor:
    """Accepted draft tokens of ``tree`` at its ``n_nodes``: what verify_greedy would return.

    Parameters
    ----------
    target_tokens : (B, P) int64
        The target's greedy tokens at depths 1..P along the true continuation.
    tree : DraftTree
        Reads ``tokens``, ``parents``, ``depth`` and ``n_nodes`` (B,) int32.

    Returns
    -------
    accept_len : (B,) int32
    """
    index = (tree.n_nodes.long() - 1).clamp(min=0)[:, None]
    return realized_accept_prefix(target_tokens, tree).gather(1, index)[:, 0]
