"""Budget policies: how big each request's tree is this round.

The decoder calls, once per round::

    args = policy.plan(context_lens, live, remaining)    # host-side, no sync; live: which slots
                                                         # hold a request (None: all); remaining:
                                                         # the tokens each may still emit (None: no limit)
    if not any(args.draft): ... a plain step; skip the rest ...
    tree = build_tree(draft_logits, k, policy.max_nodes, **args.kwargs(), context_lens=...)
    tree = policy.select(tree)                           # batch Bastion: one budget across requests;
                                                         # slots not drafting: no nodes
    expected = policy.expected_accept(tree)              # read with the round's one host read
    policy.judge(n_nodes, expected, accepted, context_lens)  # host values, every round (plain ones
                                                         # too): the floor decides the next rounds
    ... verify, accept ...
    policy.observe_round(tree, accept_len)               # the surrogate's calibration
    policy.observe_time(...)                             # each finished round's seconds (0 nodes: a plain step)
    policy.reset(slots)                                  # new requests took these slots

``Fixed(n)`` is DDTree's fixed node budget, ``GreedyStop`` CaDDTree's grow-while-the-estimated-
speedup-rises and ``Bastion`` the argmax of the estimated speedup over every intermediate
budget; all three are a cut of the same pop sequence, made inside build_tree. For a batch,
``Bastion`` builds every tree to the cap and allocates one node budget across the requests
(``allocate_batch_budget``), because a batch's verify time depends on its total node count.

The cost-aware policies also keep a speedup floor (``floor.SpeedupFloor``): a request whose
best tree is not estimated to beat a plain step takes plain steps (``BuildArgs.draft`` is
False for it; the engine verifies only its root, and skips the drafter when nobody drafts)
and probes again after a wait that keeps the probes of a drafter that never pays to about 1% of
the time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .floor import SpeedupFloor
from .latency import LatencyModel
from .surrogate import AcceptCalibrator, surrogate_accept

# Until the plain steps' correction holds PLAIN_SAMPLES measurements, a plain step after this
# many consecutive drafted rounds: the floor weighs trees against T_plain, which only plain
# steps measure, and a fresh cache's first plain steps run cold (64.6 and 55.1 ms against
# 46-48 ms later at batch 4 on the CPU): their median held T_plain 26% high, and a batch that
# drafted every round from then on drafted 79 rounds at an estimated 1.17 that realised 0.82.
PLAIN_EVERY = 16
# Three: a median that one cold step does not move. A full window (7) took a plain step every
# 17 rounds for most of a 128-token request where trees paid 1.4x (an oracle drafter in fp32 on
# an AVX2 CPU, the target's linear layers through skinny_linear): 2.3% of bastion's speed.
PLAIN_SAMPLES = 3
# ... unless the last round's estimate is too far above 1 for an error of T_plain this large to
# bring it under: such a measurement decides nothing, and where trees pay 1.7x (an oracle
# drafter in fp32 on an AVX2 CPU) each one lost 0.4 of a step, 1% of the time over two a request.
# 0.3: the cold steps' median above held T_plain 26% high.
PLAIN_ERROR = 0.3


@dataclass(frozen=True)
class BuildArgs:
    """The budget arguments of ``build_tree`` for one round.

    policy: "fixed", "greedy_stop" or "argmax". budgets: (B,) int32, the node count (fixed)
    or the cap. latency_table: (B or 1, max_nodes) fp32 or None (fixed). accept_scale: (B,)
    fp32 or None. Not passed to build_tree: draft, B host bools, whether each request slot
    drafts this round (False: it takes a plain step, or holds no request); probe, B host
    bools, whether that draft is a probe after plain steps (or the first round).
    """

    policy: str
    budgets: torch.Tensor
    latency_table: torch.Tensor | None = None
    accept_scale: torch.Tensor | None = None
    draft: tuple[bool, ...] = ()
    probe: tuple[bool, ...] = ()

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
    """Common interface; a policy that learns nothing ignores ``observe``, ``observe_time`` and
    ``judge``, and drafts every round."""

    def __init__(self, max_nodes: int, device: str | torch.device = "cpu"):
        if not isinstance(max_nodes, int) or not 1 <= max_nodes <= 4096:
            raise ValueError(f"max_nodes must be an int in 1..4096, got {max_nodes!r}")
        self.max_nodes = max_nodes
        self.device = torch.device(device)
        self._draft: tuple[bool, ...] = ()  # the last plan's, read by select

    def _budgets(self, batch: int, value: int) -> torch.Tensor:
        return torch.full((batch,), value, dtype=torch.int32, device=self.device)

    @abstractmethod
    def plan(self, context_lens, live: tuple[bool, ...] | None = None, remaining: list[int] | None = None) -> BuildArgs:
        """Build arguments for a round; context_lens: an int or B host ints (root positions);
        live: B host bools, the slots that hold a request (None: every slot); remaining: B
        host ints, the tokens each request may still emit (None: no limit; the speedup floor
        takes no probe too near a request's end)."""

    def _plan_args(self, policy: str, budget: int, batch: int, live, tables=None, remaining=None) -> BuildArgs:
        """BuildArgs of a round; ``tables``: None, or a callable giving (latency_table,
        accept_scale), called only when some slot drafts (a plain round builds no tree, and the
        floor's plain rounds are most rounds where trees do not pay)."""
        live = (True,) * batch if live is None else tuple(live)
        if len(live) != batch:
            raise ValueError(f"live must hold {batch} values (one per context length), got {len(live)}")
        draft, probe = self._decide(batch, live, remaining)
        self._draft = draft
        latency_table, accept_scale = tables() if tables is not None and any(draft) else (None, None)
        return BuildArgs(policy, self._budgets(batch, budget), latency_table, accept_scale, draft, probe)

    def _decide(self, batch: int, live: tuple[bool, ...], remaining) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """This round's (draft, probe) per slot: every live slot drafts, none probes."""
        return live, (False,) * batch

    def select(self, tree):
        """The tree to verify, given the one build_tree returned: the slots not drafting this
        round (a plain step, or no request) keep no nodes: they verify only their root."""
        if all(self._draft):
            return tree
        return tree.cut(torch.where(self._drafting(tree.device), tree.n_nodes, 0))

    def _drafting(self, device) -> torch.Tensor:
        """(B,) bool on ``device``: the slots drafting this round."""
        return torch.tensor(self._draft, device=device)

    def expected_accept(self, tree) -> torch.Tensor:
        """(B,) fp32 on the tree's device: the surrogate A of each tree as cut (0 for a tree of
        no nodes), the drafter's own estimate, uncalibrated: the floor calibrates it from the
        realised lengths itself (a second calibration on top of ``accept_scale`` would count
        each early miss twice); device ops only, for the engine's one host read."""
        return surrogate_accept(tree.scores, tree.n_nodes)

    def judge(self, n_nodes: list[int], expected_accept: list[float], accepted: list[int],
              context_lens: list[int], plain_seconds: float | None = None) -> list[float | None]:
        """Host values of this round, every round: node counts (0 for a request not drafting),
        ``expected_accept``, the accepted draft tokens of each request's previous round, root
        positions -> the estimated speedup of each request's tree over a plain step, None
        where there is no estimate. Cost-aware policies decide their next rounds from it.
        ``plain_seconds``: this round's :meth:`plain_seconds` where the caller has it already
        (the engine records it every round), else None."""
        return [None] * len(n_nodes)

    def plain_seconds(self, context_lens: list[int]) -> float | None:
        """Estimated seconds of a plain step of this batch (None without a latency model)."""
        return None

    def observe(self, predicted: torch.Tensor, accept_len: torch.Tensor, drafted: torch.Tensor | None = None) -> None:
        """Feed a round's uncalibrated surrogate A (B,) fp32 and realized accepted lengths (B,);
        drafted: (B,) bool, the requests that verified a tree (None: all)."""

    def observe_round(self, tree, accept_len: torch.Tensor) -> None:
        """Feed a verified round: the trees as verified and the accepted lengths (B,) (device
        ops only). The slots that verified no tree leave the calibration alone."""
        self.observe(surrogate_accept(tree.scores, tree.n_nodes), accept_len, tree.n_nodes > 0)

    def observe_time(self, n_nodes: int, context_len: float, seconds: float, batch: int = 1) -> None:
        """Feed a finished round's measured time (total nodes, 0 for a plain step; mean context
        length; seconds)."""

    def reset(self, slots: list[int]) -> None:
        """New requests took the slots ``slots`` (host ints): their learnt state starts afresh."""


class Fixed(Policy):
    """DDTree: ``n`` nodes every round (fewer only when the lattice is smaller)."""

    name = "fixed"

    def __init__(self, n: int, max_nodes: int | None = None, device: str | torch.device = "cpu"):
        super().__init__(n if max_nodes is None else max_nodes, device)
        if not isinstance(n, int) or not 1 <= n <= self.max_nodes:
            raise ValueError(f"n must be an int in 1..max_nodes={self.max_nodes}, got {n!r}")
        self.n = n

    def plan(self, context_lens, live: tuple[bool, ...] | None = None, remaining: list[int] | None = None) -> BuildArgs:
        return self._plan_args(self.name, self.n, _batch_size(context_lens), live)


class _CostAware(Policy):
    """A policy that cuts by estimated speedup (1 + accept_scale * A(n)) / T(n), with the speedup
    floor unless ``floor`` is False."""

    def __init__(self, latency: LatencyModel, max_nodes: int, batch: int = 1, calibrate: bool = True,
                 device: str | torch.device = "cpu", floor: bool = True):
        super().__init__(max_nodes, device)
        self.latency = latency
        self.calibrator = AcceptCalibrator(batch, device=self.device) if calibrate else None
        self.floor = SpeedupFloor(batch) if floor else None
        self._plans = 0  # rounds planned
        self._plain_measured = False  # whether a plain step's time has come back (observe_time)
        self._drafted_in_a_row = 0  # consecutive rounds in which some request drafted
        self._last_estimate: float | None = None  # the lowest estimated speedup of the last round with trees
        # Total nodes of the rounds with trees: a mean over them (weighted sum, weight), the
        # weights fading by the floor's decay.
        self._tree_nodes = (0.0, 0.0)

    # Whether the floor stops a request whose own tree does not pay while the batch's round does
    # (each tree cut on its own: its size is the request's choice).
    _judge_each = True

    def _decide(self, batch: int, live: tuple[bool, ...], remaining) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        if self.floor is None:
            return super()._decide(batch, live, remaining)
        if self.floor.slots != batch:
            raise ValueError(f"context_lens has {batch} requests but the policy was made for batch={self.floor.slots}")
        # Until a plain step has been measured, T_plain is the model's guess, and the floor
        # measures plain steps only by taking them: a guess too high (a CPU's roofline often
        # is) would let a drafter that accepts nothing draft on, its rounds judged cheaper
        # than the guessed step. So the second round is a plain step, whatever the trees.
        self._plans += 1
        plain = (not self._plain_measured and self._plans == 2) or (
            self._drafted_in_a_row >= PLAIN_EVERY and self._plain_samples_short() and self._plain_step_decides())
        draft, probe = self.floor.plan(live, plain=plain, remaining=remaining)
        self._drafted_in_a_row = self._drafted_in_a_row + 1 if any(draft) else 0
        return draft, probe

    def _plain_step_decides(self) -> bool:
        """Whether a T_plain off by ``PLAIN_ERROR`` could bring the last round's estimate under 1
        (True before any estimate)."""
        return self._last_estimate is None or self._last_estimate * (1.0 - PLAIN_ERROR) < 1.0

    def _plain_samples_short(self) -> bool:
        """Whether the plain steps' correction holds fewer than ``PLAIN_SAMPLES`` measurements."""
        return self.latency.plain_correction.samples(1) < PLAIN_SAMPLES

    def _accept_scale(self, batch: int) -> torch.Tensor:
        if self.calibrator is None:
            return torch.ones(batch, dtype=torch.float32, device=self.device)
        scale = self.calibrator.scale
        if scale.shape[0] != batch:
            raise ValueError(f"context_lens has {batch} requests but the policy was made for batch={scale.shape[0]}")
        return scale

    def plan(self, context_lens, live: tuple[bool, ...] | None = None, remaining: list[int] | None = None) -> BuildArgs:
        batch = _batch_size(context_lens)
        return self._plan_args(self.name, self.max_nodes, batch, live,
                               lambda: (self.latency.latency_table(context_lens, self.max_nodes, self.device), self._accept_scale(batch)),
                               remaining)

    def judge(self, n_nodes: list[int], expected_accept: list[float], accepted: list[int],
              context_lens: list[int], plain_seconds: float | None = None) -> list[float | None]:
        """Request b's estimate: S_b = (1 + g_b) * T_plain(B, c) / T_round(M, c, B), with g_b
        the floor's gain (the request's realised mean accepted length, its surrogate A_b for
        the trees this policy chose, calibrated, standing in before the outcomes); M the mean
        of the rounds' nodes over the batch, c the mean root position; both times modelled and
        corrected by measured rounds and plain steps (``plain_seconds``: before the first plain
        step, no more than the model's).
        S_b < 1: request b takes plain steps until its next probe (``SpeedupFloor``)."""
        if self.floor is None:
            return [None] * len(n_nodes)
        if self.floor.drafting:
            total, weight = self._tree_nodes
            decay = self.floor.decay
            self._tree_nodes = (decay * total + max(sum(n_nodes), 1), decay * weight + 1.0)
        # The floor's gains are means over the trees so far, so the round they pay for is a round
        # of their mean size, at this round's corrections: this round's tree alone, set against a
        # mean of gains, stopped requests on their most confident rounds (an oracle's 5-node tree
        # that accepted 5 tokens was judged 0.78 against the 1-node trees before it).
        total, weight = self._tree_nodes
        round_s = self.latency.round_estimate(total / weight if weight else 1.0, sum(context_lens) / len(context_lens), len(n_nodes))
        if plain_seconds is None:
            plain_seconds = self.plain_seconds(context_lens)
        estimates = self.floor.judge(expected_accept, accepted, round_s, plain_seconds, each=self._judge_each)
        judged = [e for e in estimates if e is not None]
        if judged:
            self._last_estimate = min(judged)
        return estimates

    def plain_seconds(self, context_lens: list[int]) -> float:
        """The measured plain steps' estimate; before the first one, the lower of the latency
        model's stand-in (the smallest rounds' correction) and the uncorrected model. The floor
        measures plain steps only by taking them, so an estimate too high would never be
        corrected while a drafter that does not pay keeps drafting; one too low is corrected
        by the plain steps it causes."""
        context, batch = sum(context_lens) / len(context_lens), len(context_lens)
        estimate = self.latency.plain_estimate(context, batch)
        if self.latency.plain_correction.log_factors():
            return estimate
        return min(estimate, self.latency.plain_modelled(context, batch))

    def observe(self, predicted: torch.Tensor, accept_len: torch.Tensor, drafted: torch.Tensor | None = None) -> None:
        if self.calibrator is not None:
            self.calibrator.observe(predicted, accept_len, drafted)

    def observe_time(self, n_nodes: int, context_len: float, seconds: float, batch: int = 1) -> None:
        if n_nodes == 0:
            self._plain_measured = True
            self.latency.observe_plain(context_len, seconds, batch)
        else:
            self.latency.observe(n_nodes, context_len, seconds, batch)

    def reset(self, slots: list[int]) -> None:
        if self.floor is not None:
            self.floor.reset(slots)
        if self.calibrator is not None:
            fresh = torch.zeros(self.calibrator.scale.shape, dtype=torch.bool, device=self.device)
            fresh[list(slots)] = True
            self.calibrator.reset(fresh)


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

    def __init__(self, latency: LatencyModel, max_nodes: int, batch: int = 1, calibrate: bool = True, batch_allocation: bool = True,
                 device="cpu", floor: bool = True):
        super().__init__(latency, max_nodes, batch, calibrate, device, floor)
        self.batch_allocation = batch_allocation
        # One budget across the batch: a request's tree size is the allocation's, so only the
        # batch's round is judged.
        self._judge_each = not (batch_allocation and batch > 1)
        self._batch_table = None
        self._batch_scale = None

    def plan(self, context_lens, live: tuple[bool, ...] | None = None, remaining: list[int] | None = None) -> BuildArgs:
        batch = _batch_size(context_lens)
        # A round in which nobody drafts never reaches select: nothing may outlive its plan.
        self._batch_table = self._batch_scale = None
        if batch == 1 or not self.batch_allocation:
            return super().plan(context_lens, live, remaining)
        args = self._plan_args("fixed", self.max_nodes, batch, live, remaining=remaining)
        if any(args.draft):
            self._batch_table = self.latency.batch_latency_table(context_lens, batch * self.max_nodes, self.device)
            self._batch_scale = self._accept_scale(batch)
        return args

    def select(self, tree):
        """Cut a batch built to the cap to the allocated per-request counts (``tree.cut``); the
        slots not drafting this round take no part in the allocation and keep no nodes."""
        if self._batch_table is not None:
            scores = torch.where(self._drafting(tree.device)[:, None], tree.scores, -float("inf"))
            tree = tree.cut(allocate_batch_budget(scores, self._batch_table, self._batch_scale))
        return super().select(tree)


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
        Nodes to keep per request (>= 1 for every request with a node; 0 for a request whose
        scores are all -inf, e.g. a slot not drafting); pass to ``DraftTree.cut``.

    Notes
    -----
    A node's gain is its calibrated path probability. Gains do not increase along each
    request's pop order, so the global top-M by gain (stable sort) is a prefix of every
    request's sequence, and it has the largest surrogate A of all selections of M nodes that
    are prefixes. The M that maximises (B + A_top(M)) / T_batch(M) is kept, with every
    request's first node forced in (a tree has at least one node), and the bonus tokens B
    counted for the requests with a tree. Tensor ops only: no sync.
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
    priority[:, 0] = torch.where(real[:, 0], float("inf"), -1.0)
    order = torch.sort(priority.reshape(-1), descending=True, stable=True).indices
    accepted = torch.cumsum(torch.where(real, gains, 0.0).reshape(-1)[order], dim=0)
    requests = real[:, 0].sum()
    speedup = (requests + accepted) / batch_table[:total].float()
    m = torch.arange(1, total + 1, device=scores.device)
    feasible = (m >= requests) & real.reshape(-1)[order]
    best = torch.argmax(torch.where(feasible, speedup, -float("inf")))
    rank = torch.empty(total, dtype=torch.long, device=scores.device)
    rank[order] = torch.arange(total, device=scores.device)
    return ((rank.reshape(batch, nodes) <= best) & real).sum(dim=1).int()
