"""The rounds of the decoding loop (method.md section 1), two kinds behind one interface,
``step(batch)``, each phase a method a test can call alone:

- ``TreeRound``: draft -> build -> (the round's host read) -> verify -> accept -> commit;
- ``PlainRound``: (the host read) -> one target step over every slot's root -> commit; the
  ``ar`` strategy, and a speculative batch's round when no request drafts (the speedup
  floor), which then still feeds the step's features to the drafter.

``Rounds.next`` is where a strategy decides: ``ar`` always steps plainly; the others ask the
policy which slots draft this round and take a tree round when any request does.
"""

from __future__ import annotations

import dataclasses

import torch
from bastion_ext import ops

from .records import RoundClock
from .tree_ops import accept

# The expected accepted length travels in the round's int64 read as millionths of a token.
ACCEPT_UNITS = 1_000_000


class Rounds:
    """A run's rounds: ``next(batch)`` marks the round's start and returns the round to step.
    plan: the strategy's ``strategies.Plan`` (None for ``ar``)."""

    def __init__(self, plan, clock: RoundClock):
        self.plan, self.clock = plan, clock
        self.plain = PlainRound(clock, plan)
        self.tree = None if plan is None else TreeRound(clock, plan)

    def next(self, batch):
        self.clock.mark("round")
        if self.plan is None:
            return self.plain
        args = self.plan.policy.plan(batch.context_lens(), batch.live, batch.remaining())
        round_ = self.tree if any(args.draft) else self.plain
        round_.args = args
        return round_


class _Round:
    """What both kinds share: the policy's view of a round at its host read, and its end."""

    def __init__(self, clock: RoundClock, plan):
        self.clock, self.plan = clock, plan
        self.args = None  # this round's BuildArgs (speculative runs)

    def judge(self, batch, node_counts: list[int], expected: list[float]) -> None:
        """After the read: the policy weighs this round's trees (node counts and the surrogate
        expected acceptance per slot) and the previous round's outcomes, and each request in
        flight opens its record."""
        if self.plan is None:
            return
        policy, contexts = self.plan.policy, batch.context_lens()
        plain_s = policy.plain_seconds(contexts)
        estimates = policy.judge(node_counts, expected, batch.accepted, contexts, plain_s)
        for slot, request in enumerate(batch.slots):
            if request is not None:
                batch.records.open(request, self.clock, k=self.plan.k, max_nodes=self.plan.max_nodes, n_nodes=node_counts[slot],
                                   drafted=node_counts[slot] > 0, probe=self.args.probe[slot],
                                   estimated_speedup=estimates[slot], plain_s=plain_s)

    def end(self, batch, nodes: int) -> None:
        """Mark the commit and feed the policy every measured round the device has finished
        (keyed by total nodes, 0 for a plain step, the mean context and the batch size)."""
        self.clock.mark("commit")
        if self.plan is None:
            return
        contexts = batch.context_lens()
        self.clock.end_round((nodes, sum(contexts) / len(contexts), len(contexts)))
        for (n, context, size), seconds in self.clock.finished():
            self.plan.policy.observe_time(n, context, seconds, size)


class PlainRound(_Round):
    """One target step over every slot's root: no drafter forward, no tree."""

    def step(self, batch) -> None:
        self.clock.mark("draft")
        batch.read()
        if not any(batch.live):
            return
        self.judge(batch, [0] * len(batch.slots), [0.0] * len(batch.slots))
        self.clock.mark("build")
        self.forward(batch)
        self.clock.mark("verify")
        self.end(batch, 0)

    def forward(self, batch) -> None:
        """The step: every slot's next token as ``ar`` picks it (the uniform of its request
        and position); with a drafter, the step's features are held for its context
        (``Batch.held``), so a later round drafts from all of it. The pending tokens accept
        nothing, then the new root."""
        target = batch.target
        root_positions = target.lengths.clone()
        logits, features = target.plain_step(batch.roots)
        bonus = batch.sampler.pick(logits, batch.request_ids, target.lengths)
        if batch.drafter is not None:
            batch.held.hold(features, root_positions, target.live)
            if batch.held.full:
                batch.flush_held()
        batch.pending[:, 0] = 0
        batch.pending[:, 1:-1] = -1
        batch.pending[:, -1] = bonus
        batch.roots.copy_(bonus)


class TreeRound(_Round):
    """draft -> build -> read -> verify -> accept -> commit over every slot; the slots not
    drafting this round (the policy's floor, or no request) verify their root alone."""

    def step(self, batch) -> None:
        draft_logits = self.draft(batch)
        self.clock.mark("draft")
        tree = self.build(batch, draft_logits)
        expected = torch.round(self.plan.policy.expected_accept(tree) * ACCEPT_UNITS).long()
        values = batch.read(torch.stack([tree.n_nodes.long(), expected], 1))
        if not any(batch.live):
            return
        tree, counts = self.stand(batch, tree, [row[0] for row in values])
        self.judge(batch, counts, [row[1] / ACCEPT_UNITS for row in values])
        batch.records.keep_topk(batch.slots, draft_logits)
        self.clock.mark("build")
        # At least one verify column: every request that drafted may have just left the batch.
        n = max(max(counts), 1)
        logits, features = batch.target.verify(tree, batch.roots, n)
        self.clock.mark("verify")
        result = self.accept(batch, tree, n, logits)
        self.commit(batch, tree, result, features)
        self.end(batch, max(sum(counts), 1))

    def draft(self, batch) -> torch.Tensor:
        """(capacity, P, V_draft) fp32: one drafter forward over every slot's root, after the
        context of the plain steps since the last draft."""
        batch.flush_held()
        return batch.drafter.draft(batch.state, batch.roots, batch.target.lengths)

    def build(self, batch, draft_logits: torch.Tensor):
        """This round's trees: the plan's budget arguments -> build_tree into the round buffers
        -> the policy's selection (the batch allocation; no nodes for the slots not drafting)
        -> target token ids (a reduced draft vocabulary's map)."""
        tree = ops.build_tree(draft_logits, self.plan.k, self.plan.max_nodes, context_lens=batch.target.lengths,
                              out=batch.buffers.tree, **self.args.kwargs())
        tree = self.plan.policy.select(tree)
        if hasattr(batch.drafter, "to_target_ids"):
            tree = dataclasses.replace(tree, tokens=batch.drafter.to_target_ids(tree.tokens))
        return tree

    @staticmethod
    def stand(batch, tree, node_counts: list[int]):
        """The trees that stand after the read: the slots freed there keep no nodes. Returns
        (the trees, host node counts per slot)."""
        if not batch.retired:
            return tree, node_counts
        standing = torch.tensor(batch.live, device=tree.device)
        counts = [n if live else 0 for n, live in zip(node_counts, batch.live)]
        return tree.cut(torch.where(standing, tree.n_nodes, 0)), counts

    @staticmethod
    def accept(batch, tree, n: int, logits: torch.Tensor):
        """The acceptance walk over the verify's logits (greedy, or sample-and-match with the
        uniform of each token's request and position)."""
        return accept(tree, n, logits, batch.sampler, batch.buffers, batch.request_ids, batch.target.lengths)

    def commit(self, batch, tree, result, features) -> None:
        """Keep the accepted paths: compact the target's KV cache, extend the drafter with the
        root's and the path's features (rows of the verify forward), the tokens pending for the
        next read, the new roots, and the policy's surrogate calibration."""
        target = batch.target
        root_positions = target.lengths.clone()
        target.commit(result.accepted_nodes, result.accept_len)
        keep = torch.cat([torch.zeros_like(root_positions)[:, None], result.accepted_nodes.long() + 1], 1).clamp(min=0)
        features = features.gather(1, keep[..., None].expand(-1, -1, features.shape[-1]))
        offsets = torch.arange(1 + batch.positions, device=root_positions.device)
        batch.drafter.extend(batch.state, features, root_positions[:, None] + offsets,
                             counts=(1 + result.accept_len.long()) * target.live)
        path = result.accepted_nodes.long()
        batch.pending[:, 0] = result.accept_len
        batch.pending[:, 1:-1] = torch.where(path >= 0, tree.tokens.gather(1, path.clamp(min=0)), -1)
        batch.pending[:, -1] = result.bonus
        batch.roots.copy_(result.bonus)
        self.plan.policy.observe_round(tree, result.accept_len)
