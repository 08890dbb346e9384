"""Budget policies: how big each request's tree is this round.

The decoder calls, once per round::

    args = policy.plan(context_lens)                     # host-side, no sync
    tree = build_tree(draft_logits, k, policy.max_nodes, **args.kwargs(), context_lens=...)
    tree = policy.select(tree)                           # batch Bastion: one budget across requests
    ... verify, accept ...
    policy.observe(surrogate_accept(tree.scores, tree.n_nodes), accept_len)
    policy.observe_time(...)                             # for each RoundTimer.ready() entry

``Fixed(n)`` is DDTree's fixed node budget, ``GreedyStop`` CaDDTree's grow-while-the-estimated-
speedup-rises and ``Bastion`` the argmax of the estimated speedup over every intermediate
budget; all three are a cut of the same pop sequence, made inside build_tree. For a batch,
``Bastion`` builds every tree to the cap and allocates one node budget across the requests
(``allocate_batch_budget``), because a batch's verify time depends on its total node count.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .latency import LatencyModel
from .surrogate import AcceptCalibrator


@dataclass(frozen=True)
class BuildArgs:
    """The budget arguments of ``build_tree`` for one round.

    policy: "fixed", "greedy_stop" or "argmax". budgets: (B,) int32, the node count (fixed)
    or the cap. latency_table: (B or 1, max_nodes) fp32 or None (fixed). accept_scale: (B,)
    fp32 or None.
    """

    policy: str
    budgets: torch.Tensor
    latency_table: torch.Tensor | None = None
    accept_scale: torch.Tensor | None = None

    def kwargs(self) -> dict:
        return {"policy": self.policy, "budgets": self.budgets, "latency_table": self.latency_table, "accept_scale": self.accept_scale}


def _batch_size(context_lens) -> int:
    if isinstance(context_lens, int):
        return 1
    size = len(context_lens)
    if size < 1:
        raise ValueError("context_lens must hold at least one request")
    return size


class Policy(ABC):
    """Common interface; a policy that learns nothing ignores ``observe`` and ``observe_time``."""

    def __init__(self, max_nodes: int, device: str | torch.device = "cpu"):
        if not isinstance(max_nodes, int) or not 1 <= max_nodes <= 4096:
            raise ValueError(f"max_nodes must be an int in 1..4096, got {max_nodes!r}")
        self.max_nodes = max_nodes
        self.device = torch.device(device)

    def _budgets(self, batch: int, value: int) -> torch.Tensor:
        return torch.full((batch,), value, dtype=torch.int32, device=self.device)

    @abstractmethod
    def plan(self, context_lens) -> BuildArgs:
        """Build arguments for a round; context_lens: an int or B host ints (root positions)."""

    def select(self, tree):
        """The tree to verify, given the one build_tree returned (the same one by default)."""
        return tree

    def observe(self, predicted: torch.Tensor, accept_len: torch.Tensor) -> None:
        """Feed a round's uncalibrated surrogate A (B,) fp32 and realized accepted lengths (B,)."""

    def observe_time(self, n_nodes: int, context_len: float, seconds: float, batch: int = 1) -> None:
        """Feed a finished round's measured time (total nodes, mean context length, seconds)."""

    def keep_requests(self, rows: torch.Tensor) -> None:
        """Keep the per-request state of ``rows`` only (int64 indices): finished requests left."""


class Fixed(Policy):
    """DDTree: ``n`` nodes every round (fewer only when the lattice is smaller)."""

    name = "fixed"

    def __init__(self, n: int, max_nodes: int | None = None, device: str | torch.device = "cpu"):
        super().__init__(n if max_nodes is None else max_nodes, device)
        if not isinstance(n, int) or not 1 <= n <= self.max_nodes:
            raise ValueError(f"n must be an int in 1..max_nodes={self.max_nodes}, got {n!r}")
        self.n = n

    def plan(self, context_lens) -> BuildArgs:
        return BuildArgs(self.name, self._budgets(_batch_size(context_lens), self.n))


class _CostAware(Policy):
    """A policy that cuts by estimated speedup (1 + accept_scale * A(n)) / T(n)."""

    def __init__(self, latency: LatencyModel, max_nodes: int, batch: int = 1, calibrate: bool = True, device: str | torch.device = "cpu"):
        super().__init__(max_nodes, device)
        self.latency = latency
        self.calibrator = AcceptCalibrator(batch, device=self.device) if calibrate else None

    def _accept_scale(self, batch: int) -> torch.Tensor:
        if self.calibrator is None:
            return torch.ones(batch, dtype=torch.float32, device=self.device)
        scale = self.calibrator.scale
        if scale.shape[0] != batch:
            raise ValueError(f"context_lens has {batch} requests but the policy was made for batch={scale.shape[0]}")
        return scale

    def plan(self, context_lens) -> BuildArgs:
        batch = _batch_size(context_lens)
        return BuildArgs(
            self.name,
            self._budgets(batch, self.max_nodes),
            self.latency.latency_table(context_lens, self.max_nodes, self.device),
            self._accept_scale(batch),
        )

    def observe(self, predicted: torch.Tensor, accept_len: torch.Tensor) -> None:
        if self.calibrator is not None:
            self.calibrator.observe(predicted, accept_len)

    def observe_time(self, n_nodes: int, context_len: float, seconds: float, batch: int = 1) -> None:
        self.latency.observe(n_nodes, context_len, seconds, batch)

    def keep_requests(self, rows: torch.Tensor) -> None:
        if self.calibrator is not None:
            self.calibrator.keep(rows.to(self.device))


class GreedyStop(_CostAware):
    """CaDDTree: grow while the estimated speedup does not drop; stop at the first drop."""

    name = "greedy_stop"


class Bastion(_CostAware):
    """BASTION: the budget that maximises the estimated speedup over 1..max_nodes.

    With one request the cut happens in build_tree (policy "argmax"). With several and
    ``batch_allocation`` on, every tree is built to the cap and ``select`` keeps the global
    best nodes by gain per unit of batched verify time (``allocate_batch_budget``).
    """

    name = "argmax"

    def __init__(self, latency: LatencyModel, max_nodes: int, batch: int = 1, calibrate: bool = True, batch_allocation: bool = True, device="cpu"):
        super().__init__(latency, max_nodes, batch, calibrate, device)
        self.batch_allocation = batch_allocation
        self._batch_table = None
        self._batch_scale = None

    def plan(self, context_lens) -> BuildArgs:
        batch = _batch_size(context_lens)
        if batch == 1 or not self.batch_allocation:
            return super().plan(context_lens)
        self._batch_table = self.latency.batch_latency_table(context_lens, batch * self.max_nodes, self.device)
        self._batch_scale = self._accept_scale(batch)
        return BuildArgs("fixed", self._budgets(batch, self.max_nodes))

    def select(self, tree):
        """Cut a batch built to the cap to the allocated per-request counts (``tree.cut``)."""
        if self._batch_table is None:
            return tree
        counts = allocate_batch_budget(tree.scores, self._batch_table, self._batch_scale)
        self._batch_table = self._batch_scale = None
        return tree.cut(counts)


def allocate_batch_budget(scores: torch.Tensor, batch_table: torch.Tensor, accept_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Split one node budget across a batch by marginal gain per unit of batched verify time.

    Parameters
    ----------
    scores : (B, N) float32
        Log path scores of trees built to the cap, in pop order, -inf past each tree.
    batch_table : (>= B * N,) float32
        T_batch(M), the round time with M tree nodes in total, at column M - 1.
    accept_scale : (B,) or (1,) float32, optional
        Calibration of each request's surrogate (1 if None).

    Returns
    -------
    counts : (B,) int32
        Nodes to keep per request (>= 1); pass to ``DraftTree.cut``.

    Notes
    -----
    A node's gain is its calibrated path probability. Gains do not increase along each
    request's pop order, so the global top-M by gain (stable sort) is a prefix of every
    request's sequence, and it has the largest surrogate A of all selections of M nodes that
    are prefixes. The M that maximises (B + A_top(M)) / T_batch(M) is kept, with every
    request's first node forced in (a tree has at least one node). Tensor ops only: no sync.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [batch, nodes], got shape {tuple(scores.shape)}")
    batch, nodes = scores.shape
    total = batch * nodes
    if batch_table.dim() != 1 or batch_table.shape[0] < total:
        raise ValueError(f"batch_table must be 1-D with at least batch * nodes = {total} entries, got shape {tuple(batch_table.shape)}")
    scale = torch.ones(batch, dtype=torch.float32, device=scores.device) if accept_scale is None else accept_scale.float()
    if scale.shape not in ((batch,), (1,)):
        raise ValueError(f"accept_scale must have shape ({batch},) or (1,), got {tuple(scale.shape)}")
    real = torch.isfinite(scores)
    gains = torch.exp(scores.double()).float() * scale.reshape(-1, 1)
    priority = torch.where(real, gains, -1.0)
    priority[:, 0] = float("inf")
    order = torch.sort(priority.reshape(-1), descending=True, stable=True).indices
    accepted = torch.cumsum(torch.where(real, gains, 0.0).reshape(-1)[order], dim=0)
    speedup = (batch + accepted) / batch_table[:total].float()
    m = torch.arange(1, total + 1, device=scores.device)
    feasible = (m >= batch) & real.reshape(-1)[order]
    best = torch.argmax(torch.where(feasible, speedup, -float("inf")))
    rank = torch.empty(total, dtype=torch.long, device=scores.device)
    rank[order] = torch.arange(total, device=scores.device)
    return (rank.reshape(batch, nodes) <= best).sum(dim=1).int()
