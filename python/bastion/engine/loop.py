"""The decoding loop (method.md section 1): prefill, then per round draft -> build the tree ->
one target forward over it -> acceptance walk -> commit the accepted path. Batch 1."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch
from bastion_ext.surrogate import surrogate_accept

from ..drafter import select_features
from . import tree_ops
from .sampling import Sampler
from .strategies import make_plan
from .target import TargetCache


@dataclass
class GenerationConfig:
    """What to generate and how.

    strategy: one of ``strategies.STRATEGIES``. budget: ddtree's fixed node count, or the
    cap of caddtree / bastion. topk: branching width K. record_topk: how many of each draft
    position's top candidates to keep in the round records (0: none, the cheapest).
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


@dataclass
class GenerationResult:
    """New tokens, timings and one record per round (dicts, JSON-ready)."""

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
        }


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def check_context(model, prompt_len: int, max_new_tokens: int, draft_positions: int) -> None:
    """ValueError if the prompt plus the generation (and one tree's depth) exceed the model's
    context window."""
    window = getattr(model.config, "max_position_embeddings", None)
    need = prompt_len + max_new_tokens + draft_positions
    if window is not None and need > window:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} (+ {draft_positions} "
            f"draft positions) exceeds the model's context of {window} tokens")


def _tree_round(target: TargetCache, drafter, state, plan, sampler: Sampler, root: int, record_topk: int):
    """One speculative round from the committed context + ``root``: draft, build, verify,
    accept, commit the cache and the drafter's context. Returns (the committed new tokens:
    the accepted path and the bonus, the round's record)."""
    device = target.device
    context = target.length  # the root's position
    t0 = _now(device)
    draft_logits = drafter.draft(state, torch.tensor([root], device=device), torch.tensor([context], device=device))
    t1 = _now(device)
    args = plan.policy.plan(context)
    tree = tree_ops.build_tree(draft_logits, plan.k, plan.max_nodes, context, **args.kwargs())
    to_target_ids = getattr(drafter, "to_target_ids", None)  # a reduced draft vocabulary's map
    if to_target_ids is not None:
        tree = dataclasses.replace(tree, tokens=to_target_ids(tree.tokens))
    n = int(tree.n_nodes[0])  # the verify forward's length: one host read per round
    tokens = torch.cat([torch.tensor([[root]], device=device), tree.tokens[:, :n]], 1)
    positions = torch.cat([torch.tensor([[context]], device=device), tree.positions[:, :n]], 1)
    mask = tree_ops.verify_mask(tree, n)
    t2 = _now(device)
    logits, hidden = target.verify(tokens, positions, mask)
    t3 = _now(device)
    accepted, bonus = tree_ops.accept(tree, n, logits, sampler)
    keep = torch.tensor([0] + [a + 1 for a in accepted], device=device)  # verify rows: root, path
    target.commit(keep)
    drafter.extend(state, select_features(hidden, drafter.target_layer_ids)[:, keep], positions[:, keep])
    new = tree.tokens[0, accepted].tolist() + [bonus]
    t4 = _now(device)
    plan.policy.observe(surrogate_accept(tree.scores, tree.n_nodes), torch.tensor([len(accepted)]))
    plan.policy.observe_time(n, context, t4 - t0)
    record = {
        "context_len": context, "k": plan.k, "max_nodes": plan.max_nodes, "n_nodes": n,
        "accept_len": len(accepted), "accepted_tokens": new[:-1], "bonus": bonus,
        "t_draft": t1 - t0, "t_build": t2 - t1, "t_verify": t3 - t2, "t_commit": t4 - t3,
    }
    if record_topk:
        logq, cand = torch.log_softmax(draft_logits[0].float(), -1).topk(record_topk, -1)
        cand = to_target_ids(cand) if to_target_ids is not None else cand
        record["topk_ids"], record["topk_logprobs"] = cand.tolist(), logq.tolist()
    return new, record


def generate(model, prompt_ids: list[int], config: GenerationConfig, drafter=None, latency=None,
             eos_token_ids: tuple[int, ...] = (), on_tokens=None) -> GenerationResult:
    """Decode from ``prompt_ids`` with one strategy; the output is the target's own.

    model: Hugging Face causal LM. prompt_ids: the prompt's token ids (non-empty).
    drafter: a DFlash-protocol drafter (``block_size``, ``target_layer_ids``,
    ``new_state``, ``extend``, ``draft``); unused by ``ar``. latency: a
    ``bastion_ext.latency.LatencyModel`` (``caddtree`` and ``bastion`` need it). on_tokens: called with each
    round's new token ids as they are committed (streaming).
    """
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    is_ar = config.strategy == "ar"
    if not is_ar and drafter is None:
        raise ValueError(f"strategy {config.strategy!r} needs a drafter")
    positions = 0 if is_ar else drafter.block_size - 1
    plan = make_plan(config.strategy, positions, config.budget, config.topk, latency)
    check_context(model, len(prompt_ids), config.max_new_tokens, positions)
    sampler = Sampler(config.temperature, config.top_p, config.seed)
    eos = set(eos_token_ids) if config.stop_on_eos else set()
    device = model.device
    target = TargetCache(model, want_hidden=not is_ar)
    emitted: list[int] = []

    def commit(new: list[int]) -> bool:
        """Append new tokens (cut at EOS / the length limit); True when generation is done."""
        room = config.max_new_tokens - len(emitted)
        new = new[:room]
        stop = next((i for i, t in enumerate(new) if t in eos), None)
        if stop is not None:
            new = new[: stop + 1]
        emitted.extend(new)
        if on_tokens is not None and new:
            on_tokens(new)
        return stop is not None or len(emitted) >= config.max_new_tokens

    start = _now(device)
    logits, hidden = target.prefill(torch.tensor([prompt_ids], dtype=torch.long, device=device))
    if not is_ar:
        state = drafter.new_state(1)
        drafter.extend(state, select_features(hidden, drafter.target_layer_ids),
                       torch.arange(len(prompt_ids), device=device)[None])
    root = sampler.pick(logits)
    result = GenerationResult([], len(prompt_ids), _now(device) - start, 0.0)
    done = commit([root])
    while not done:
        if is_ar:
            root = sampler.pick(target.step(torch.tensor([[root]], device=device)))
            done = commit([root])
            continue
        new, record = _tree_round(target, drafter, state, plan, sampler, root, config.record_topk)
        record["round"] = len(result.rounds)
        result.rounds.append(record)
        root = new[-1]
        done = commit(new)

    result.total_s = _now(device) - start
    result.tokens = emitted
    # The offline policy replay (bench/replay_policies.py) scores any tree of a round against
    # the target's true tokens at depths 1..P, which later rounds decided: -1 past the end.
    sequence = list(prompt_ids) + emitted
    for record in result.rounds:
        after = sequence[record["context_len"] + 1: record["context_len"] + 1 + positions]
        record["target_tokens"] = after + [-1] * (positions - len(after))
    return result
