"""The decoding loop (method.md section 1) for a batch of requests: prefill, then per round
draft -> build every tree -> one target forward over all of them -> acceptance walks ->
compact the KV cache to the accepted paths.

Every per-round tensor stays on the model's device, and each round reads the device once:
the node counts of this round's trees and their expected accepted lengths together with the
tokens the previous round committed (its verify width, the speedup floor and the host's
bookkeeping need nothing else). A request whose output is complete is therefore seen one
round late: it leaves the batch at that read, before the verify, and its tokens past the end
are cut.

The cost-aware policies may tell a request not to draft (their speedup floor): it verifies
only its root in that round, and when no request drafts the round is a plain step of the
whole batch without a drafter forward (``_plain_step``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from bastion_ext import ops
from bastion_ext.latency import RoundTimer
from bastion_ext.surrogate import surrogate_accept

from ..drafter import select_features
from .clock import PhaseClock
from .sampling import Sampler
from .strategies import make_plan
from .target import TargetCache
from .tree_ops import RoundBuffers, accept

# The expected accepted length travels in the round's int64 read as millionths of a token.
ACCEPT_UNITS = 1_000_000


@dataclass
class GenerationConfig:
    """What to generate and how.

    strategy: one of ``strategies.STRATEGIES``. budget: ddtree's fixed node count, or the
    cap of caddtree / bastion. topk: branching width K. record_topk: how many of each draft
    position's top candidates to keep in the round records (0: none, the cheapest).
    batch_allocation: ``bastion`` on a batch splits one node budget across the requests by
    marginal gain (True) or cuts each request's tree on its own (False). speedup_floor:
    ``caddtree`` and ``bastion`` take plain steps while no tree is estimated to pay (True), or
    draft every round (False).
    """

    strategy: str = "bastion"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    budget: int | None = None
    topk: int = 8
    record_topk: int = 0
    stop_on_eos: bool = True
    batch_allocation: bool = True
    speedup_floor: bool = True


@dataclass
class GenerationResult:
    """One request's new tokens, timings and one record per round (dicts, JSON-ready).
    ``total_s`` is the whole batch's time (its requests decode together)."""

    tokens: list[int]
    prompt_len: int
    prefill_s: float
    total_s: float
    rounds: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.total_s

    @property
    def mean_accept_len(self) -> float:
        """Mean accepted draft tokens per round (tokens per round minus the bonus)."""
        return sum(r["accept_len"] for r in self.rounds) / max(len(self.rounds), 1)

    @property
    def mean_tree_size(self) -> float:
        return sum(r["n_nodes"] for r in self.rounds) / max(len(self.rounds), 1)

    def summary(self) -> dict:
        budgets = [r["n_nodes"] for r in self.rounds]
        return {
            "new_tokens": len(self.tokens),
            "seconds": self.total_s,
            "tokens_per_s": self.tokens_per_s,
            "rounds": len(self.rounds),
            "mean_accept_len": self.mean_accept_len,
            "mean_tree_size": self.mean_tree_size,
            "budgets": {n: budgets.count(n) for n in sorted(set(budgets))},
            **floor_summary(self.rounds),
        }


def _round_seconds(record: dict) -> float:
    """A recorded round's measured seconds, draft to commit."""
    return record["t_draft"] + record["t_build"] + record["t_verify"] + record["t_commit"]


def floor_summary(rounds: list[dict]) -> dict:
    """What the speedup floor did over round records (of one request or many): rounds drafted
    (a tree verified) and plain (the root only), probes, and over the drafted rounds with an
    estimate the mean estimated speedup and the realised one, the sum of (1 + accept_len) *
    plain_s over the sum of their measured seconds (None where there is nothing to report)."""
    drafted = [r for r in rounds if r["drafted"]]
    judged = [r for r in drafted if r["estimated_speedup"] is not None]
    seconds = sum(_round_seconds(r) for r in judged)
    return {
        "drafted_rounds": len(drafted),
        "plain_rounds": len(rounds) - len(drafted),
        "probes": sum(r["probe"] for r in rounds),
        "estimated_speedup": sum(r["estimated_speedup"] for r in judged) / len(judged) if judged else None,
        "realised_speedup": sum((1 + r["accept_len"]) * r["plain_s"] for r in judged) / seconds if judged and seconds > 0 else None,
    }


def check_context(model, prompt_len: int, max_new_tokens: int, draft_positions: int) -> None:
    """ValueError if the prompt plus the generation (and one tree's depth) exceed the model's
    context window."""
    window = getattr(model.config, "max_position_embeddings", None)
    need = prompt_len + max_new_tokens + draft_positions
    if window is not None and need > window:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} (+ {draft_positions} "
            f"draft positions) exceeds the model's context of {window} tokens")


class _Request:
    """The host's view of one request: what it emitted, whether it is done, its rounds."""

    def __init__(self, index: int, prompt_len: int, config: GenerationConfig, eos: set[int], on_tokens):
        self.index, self.prompt_len, self.config, self.eos, self.on_tokens = index, prompt_len, config, eos, on_tokens
        self.emitted: list[int] = []
        self.generated = 0  # tokens committed by the rounds, before the cut at EOS / the limit
        self.done = False
        self.rounds: list[dict] = []

    @property
    def committed_len(self) -> int:
        """Tokens in the target's cache: the prompt and everything generated but the newest
        token (the next round's root)."""
        return self.prompt_len + self.generated - 1

    def commit(self, new: list[int]) -> None:
        """Append a round's tokens, cut at EOS / the length limit."""
        self.generated += len(new)
        new = new[: self.config.max_new_tokens - len(self.emitted)]
        stop = next((i for i, t in enumerate(new) if t in self.eos), None)
        if stop is not None:
            new = new[: stop + 1]
        self.emitted.extend(new)
        if self.on_tokens is not None and new:
            self.on_tokens(self.index, new)
        self.done = stop is not None or len(self.emitted) >= self.config.max_new_tokens


def _round_tokens(result, tree) -> torch.Tensor:
    """(B, P + 2) int64 of what a round committed: accept_len, the path's tokens (-1 after
    it), the bonus token; device ops only."""
    path = result.accepted_nodes.long()
    tokens = torch.where(path >= 0, tree.tokens.gather(1, path.clamp(min=0)), -1)
    return torch.cat([result.accept_len.long()[:, None], tokens, result.bonus[:, None]], 1)


def _select_rows(tree, rows: torch.Tensor):
    """The trees of requests ``rows`` only."""
    return dataclasses.replace(tree, **{name: t.index_select(0, rows) for name, t in tree.tensors().items()})


def _plain_step(target, drafter, state, roots, sampler, request_ids, positions: int):
    """A round in which no request drafts: one target step over the roots, no drafter forward.

    The step's features still extend the drafter's context, so that a later probe drafts
    from all of it. The token is picked as ``ar`` picks it (the uniform of its position).
    Returns (pending: (B, P + 2) int64 laid out as ``_round_tokens``, accepting nothing;
    the new roots (B,) int64).
    """
    root_positions = target.lengths.clone()
    logits, hidden = target.plain_step(roots)
    bonus = sampler.pick(logits, request_ids, target.lengths)
    drafter.extend(state, select_features(hidden, drafter.target_layer_ids), root_positions[:, None],
                   counts=torch.ones_like(root_positions))
    nothing = torch.full((len(bonus), positions), -1, dtype=torch.int64, device=bonus.device)
    return torch.cat([torch.zeros_like(bonus)[:, None], nothing, bonus[:, None]], 1), bonus


@torch.inference_mode()
def generate_batch(model, prompts: list[list[int]], config: GenerationConfig, drafter=None, latency=None,
                   eos_token_ids: tuple[int, ...] = (), on_tokens=None) -> list[GenerationResult]:
    """Decode every prompt with one strategy, all together; each output is the target's own.

    model: Hugging Face causal LM. prompts: token ids per request (each non-empty).
    drafter: a DFlash-protocol drafter (``block_size``, ``target_layer_ids``, ``new_state``,
    ``extend(state, features, positions, counts)``, ``draft``); unused by ``ar``. latency: a
    ``bastion_ext.latency.LatencyModel`` (``caddtree`` and ``bastion`` need it). on_tokens:
    called with (request index, new token ids) as tokens are committed (streaming).
    Returns one result per prompt, in order.
    """
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if not prompts or any(not p for p in prompts):
        raise ValueError("prompts must hold at least one prompt, and no prompt may be empty")
    is_ar = config.strategy == "ar"
    if not is_ar and drafter is None:
        raise ValueError(f"strategy {config.strategy!r} needs a drafter")
    device = model.device
    batch = len(prompts)
    positions = 0 if is_ar else drafter.block_size - 1
    plan = make_plan(config.strategy, positions, config.budget, config.topk, latency, batch=batch, device=device,
                     batch_allocation=config.batch_allocation, floor=config.speedup_floor)
    for prompt in prompts:
        check_context(model, len(prompt), config.max_new_tokens, positions)
    sampler = Sampler(config.temperature, config.top_p, config.seed)
    eos = set(eos_token_ids) if config.stop_on_eos else set()
    requests = [_Request(i, len(p), config, eos, on_tokens) for i, p in enumerate(prompts)]
    max_nodes = 0 if is_ar else plan.max_nodes
    longest = max(len(p) for p in prompts)
    target = TargetCache(model, batch, longest + config.max_new_tokens + positions + max_nodes + 2, want_hidden=not is_ar)
    clock = PhaseClock(device)
    timer = RoundTimer(device)

    clock.mark("start")
    logits, hidden = target.prefill(prompts)
    if not is_ar:
        state = drafter.new_state(batch)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        drafter.extend(state, select_features(hidden, drafter.target_layer_ids),
                       torch.arange(longest, device=device).expand(batch, longest), counts=lengths)
        state.set_bound(longest)
        vocab = None if sampler.greedy else logits.shape[-1]
        buffers = RoundBuffers(batch, max_nodes, positions, device, vocab)
    # Each live row's request index (the uniforms' key): rows are dropped as requests finish.
    request_ids = torch.arange(batch, device=device)
    roots = sampler.pick(logits, request_ids, target.lengths)
    clock.mark("prefill")
    # What the last round committed, read at the next round's one host read: at first the roots.
    pending = torch.cat([torch.zeros((batch, 1 + positions), dtype=torch.int64, device=device), roots[:, None]], 1)
    pending[:, 1:1 + positions] = -1
    live = list(requests)
    topk_records = []  # (requests, round records, device top-k) read once after the loop
    while True:
        if not is_ar:
            clock.mark("round")
            timer.start()
            args = plan.policy.plan([r.committed_len for r in live])
            probes = args.probe
            drafting = any(args.draft)
            if drafting:
                draft_logits = drafter.draft(state, roots, target.lengths)
                clock.mark("draft")
                tree = ops.build_tree(draft_logits, plan.k, plan.max_nodes, context_lens=target.lengths,
                                      out=buffers.tree, **args.kwargs())
                tree = plan.policy.select(tree)  # requests not drafting keep no nodes
                if hasattr(drafter, "to_target_ids"):  # a reduced draft vocabulary's map
                    tree = dataclasses.replace(tree, tokens=drafter.to_target_ids(tree.tokens))
                expected = torch.round(plan.policy.expected_accept(tree) * ACCEPT_UNITS).long()
                read = torch.cat([tree.n_nodes.long()[:, None], expected[:, None], pending], 1)
            else:
                clock.mark("draft")
                read = torch.cat([torch.zeros_like(pending[:, :2]), pending], 1)
        else:
            read = pending
        values = read.tolist()  # the round's one host read
        for request, row in zip(live, values):
            committed = row[-2 - positions:]
            accepted = committed[1:1 + committed[0]]
            if request.rounds:
                request.rounds[-1].update(accept_len=committed[0], accepted_tokens=accepted, bonus=committed[-1])
            request.commit(accepted + [committed[-1]])
        still = [i for i, r in enumerate(live) if not r.done]
        if not still:
            break
        if len(still) < len(live):
            rows = torch.tensor(still, device=device)
            values = [values[i] for i in still]
            live = [live[i] for i in still]
            roots = roots.index_select(0, rows)
            request_ids = request_ids.index_select(0, rows)
            target.keep_requests(rows)
            if not is_ar:
                state.keep_requests(rows)
                plan.policy.keep_requests(still)
                probes = tuple(probes[i] for i in still)
                if drafting:
                    tree = _select_rows(tree, rows)
                    draft_logits = draft_logits.index_select(0, rows)
                buffers = RoundBuffers(len(live), max_nodes, positions, device, vocab)
        longest = max(r.committed_len for r in live)
        target.set_bound(longest)
        if is_ar:
            logits = target.step(roots)
            roots = sampler.pick(logits, request_ids, target.lengths)
            pending = torch.cat([torch.zeros((len(live), 1), dtype=torch.int64, device=device), roots[:, None]], 1)
            continue

        state.set_bound(longest)
        contexts = [r.committed_len for r in live]
        node_counts = [row[0] for row in values]
        estimates = plan.policy.judge(node_counts, [row[1] / ACCEPT_UNITS for row in values],
                                      [row[-2 - positions] for row in values], contexts)
        plain_s = plan.policy.plain_seconds(contexts)
        for request, count, probe, estimate in zip(live, node_counts, probes, estimates):
            request.rounds.append({"context_len": request.committed_len, "k": plan.k, "max_nodes": plan.max_nodes,
                                   "n_nodes": count, "drafted": count > 0, "probe": probe, "estimated_speedup": estimate,
                                   "plain_s": plain_s, "clock_round": clock.current_round})
        clock.mark("build")
        if drafting:
            # At least one verify column: every request that drafted may have just left the batch.
            n = max(max(node_counts), 1)
            verify_logits, hidden = target.verify(tree, roots, n)
            clock.mark("verify")
            root_positions = target.lengths.clone()
            result = accept(tree, n, verify_logits, sampler, buffers, request_ids, root_positions)
            target.commit(result.accepted_nodes, result.accept_len)
            # The drafter's new context: the root and the accepted path, rows of the verify forward.
            keep = torch.cat([torch.zeros_like(root_positions)[:, None], result.accepted_nodes.long() + 1], 1).clamp(min=0)
            features = select_features(hidden, drafter.target_layer_ids)
            features = features.gather(1, keep[..., None].expand(-1, -1, features.shape[-1]))
            drafter.extend(state, features, root_positions[:, None] + torch.arange(1 + positions, device=device),
                           counts=1 + result.accept_len.long())
            pending = _round_tokens(result, tree)
            roots = result.bonus.clone()
            plan.policy.observe(surrogate_accept(tree.scores, tree.n_nodes), result.accept_len, tree.n_nodes > 0)
        else:
            pending, roots = _plain_step(target, drafter, state, roots, sampler, request_ids, positions)
            clock.mark("verify")
        clock.mark("commit")
        # A round's time is keyed by its nodes over the batch; 0 nodes: a plain step.
        timer.stop((max(sum(node_counts), 1) if drafting else 0, sum(contexts) / len(live), len(live)))
        for (nodes, context, size), seconds in timer.ready():
            plan.policy.observe_time(nodes, context, seconds, size)
        if config.record_topk and drafting:
            topk = torch.log_softmax(draft_logits.float(), -1).topk(config.record_topk, -1)
            topk_records.append(([r.rounds[-1] for r in live], topk))

    times = clock.finish()
    for records, (logq, cand) in topk_records:
        cand = drafter.to_target_ids(cand) if hasattr(drafter, "to_target_ids") else cand
        for record, ids, lp in zip(records, cand.tolist(), logq.tolist()):
            record["topk_ids"], record["topk_logprobs"] = ids, lp
    results = []
    for request, prompt in zip(requests, prompts):
        # The offline policy replay (bench/replay_policies.py) scores any tree of a round
        # against the target's true tokens at depths 1..P, which later rounds decided.
        sequence = list(prompt) + request.emitted
        for index, record in enumerate(request.rounds):
            record.update(round=index, **times.round_phases(record.pop("clock_round")))
            if record["plain_s"] is not None:
                record["realised_speedup"] = (1 + record["accept_len"]) * record["plain_s"] / _round_seconds(record)
            after = sequence[record["context_len"] + 1: record["context_len"] + 1 + positions]
            record["target_tokens"] = after + [-1] * (positions - len(after))
        results.append(GenerationResult(request.emitted, request.prompt_len, times.prefill_s, times.total_s, request.rounds))
    return results


def generate(model, prompt_ids: list[int], config: GenerationConfig, drafter=None, latency=None,
             eos_token_ids: tuple[int, ...] = (), on_tokens=None) -> GenerationResult:
    """One request: :func:`generate_batch` of ``[prompt_ids]``. on_tokens: called with each
    round's new token ids as they are committed (streaming)."""
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    stream = None if on_tokens is None else (lambda _index, new: on_tokens(new))
    return generate_batch(model, [prompt_ids], config, drafter, latency, eos_token_ids, stream)[0]
