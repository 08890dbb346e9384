"""Decoding strategies: how each one sizes and shapes the draft tree every round.

``ar`` drafts nothing; ``dflash`` is the drafter's single most likely path (K = 1, the whole
block); ``ddtree`` a fixed budget; ``caddtree`` and ``bastion`` cut the best-first pop
sequence by estimated speedup (greedy stop / argmax) with a latency model, through the
policies of ``bastion_ext.policy``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion_ext import policy as policies

STRATEGIES = ("ar", "dflash", "ddtree", "caddtree", "bastion")
DEFAULT_BUDGET = 16   # fixed ddtree budget: on a 2-core CPU a 16-node verify costs ~1.6 steps
DEFAULT_CAP = 64      # the most nodes caddtree / bastion may choose
DEFAULT_TOPK = 8


@dataclass
class Plan:
    """A strategy's per-round tree parameters: width ``k``, capacity ``max_nodes`` and the
    ``bastion_ext.policy`` policy that chooses the budget arguments each round."""

    k: int
    max_nodes: int
    policy: policies.Policy


def make_plan(strategy: str, block_positions: int, budget: int | None = None, k: int = DEFAULT_TOPK,
              latency=None, batch: int = 1, device="cpu", batch_allocation: bool = True, floor: bool = True) -> Plan | None:
    """The per-round plan of a strategy (None for ``ar``).

    block_positions: P, the positions one drafter forward predicts. budget: the fixed node
    count of ``ddtree`` or the cap of ``caddtree`` / ``bastion`` (defaults above). latency:
    a ``bastion_ext.latency.LatencyModel`` of this target on this device (cost-aware only).
    batch: requests decoded together. batch_allocation: ``bastion`` on a batch allocates one
    budget across the requests (else each tree is cut on its own). floor: the cost-aware
    policies' speedup floor (plain steps while no tree pays). device: the model's device,
    where the policy's tensors live.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if strategy == "ar":
        return None
    if strategy == "dflash":
        return Plan(1, block_positions, policies.Fixed(block_positions, device=device))
    if strategy == "ddtree":
        n = budget or DEFAULT_BUDGET
        return Plan(k, n, policies.Fixed(n, device=device))
    if latency is None:
        raise ValueError(f"strategy {strategy!r} needs a latency model (run `bastion calibrate`)")
    cap = budget or DEFAULT_CAP
    if strategy == "caddtree":
        return Plan(k, cap, policies.GreedyStop(latency, cap, batch=batch, device=device, floor=floor))
    return Plan(k, cap, policies.Bastion(latency, cap, batch=batch, batch_allocation=batch_allocation, device=device, floor=floor))
