"""The decoding loop: prefill, a loop over rounds, results (method.md section 1).

Up to ``batch_size`` requests decode together in a fixed set of slots (``batch.Batch``);
when one finishes, the next waiting prompt takes its slot between rounds. Each round is a
tree round or a plain step (``rounds``), and reads the device once.
"""

from __future__ import annotations

import torch

from .batch import Batch
from .config import GenerationConfig, check_context
from .records import GenerationResult, RoundClock, RoundRecords
from .rounds import Rounds
from .sampling import Sampler
from .strategies import make_plan
from .target import TargetCache


def open_batch(model, prompts: list[list[int]], config: GenerationConfig, drafter=None, latency=None,
               eos_token_ids: tuple[int, ...] = (), on_tokens=None, batch_size: int | None = None, on_finish=None):
    """Everything a run needs, nothing run yet: (the ``Batch`` of ``batch_size`` slots, default
    one per prompt, its prompts waiting; the ``Rounds`` of the strategy). Arguments as in
    :func:`generate_batch`."""
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {config.max_new_tokens}")
    if not prompts or any(not p for p in prompts):
        raise ValueError("prompts must hold at least one prompt, and no prompt may be empty")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    speculative = config.strategy != "ar"
    if speculative and drafter is None:
        raise ValueError(f"strategy {config.strategy!r} needs a drafter")
    slots = min(batch_size or len(prompts), len(prompts))
    positions = drafter.block_size - 1 if speculative else 0
    plan = make_plan(config.strategy, positions, config.budget, config.topk, latency, batch=slots, device=model.device,
                     batch_allocation=config.batch_allocation, floor=config.speedup_floor)
    for prompt in prompts:
        check_context(model, len(prompt), config.max_new_tokens, positions)
    max_nodes = plan.max_nodes if speculative else 0
    capacity = max(len(p) for p in prompts) + config.max_new_tokens + positions + max_nodes + 2
    target = TargetCache(model, slots, capacity, feature_layers=tuple(drafter.target_layer_ids) if speculative else ())
    eos = set(eos_token_ids) if config.stop_on_eos else set()
    batch = Batch(target, prompts, config.max_new_tokens, eos, on_tokens, config.sampler(),
                  drafter if speculative else None, plan and plan.policy,
                  RoundRecords(positions, config.record_topk) if speculative else None, positions, max_nodes,
                  on_finish and (lambda request: on_finish(request.index, request.emitted, request.rounds)))
    return batch, Rounds(plan, RoundClock(model.device))


@torch.inference_mode()
def generate_batch(model, prompts: list[list[int]], config: GenerationConfig, drafter=None, latency=None,
                   eos_token_ids: tuple[int, ...] = (), on_tokens=None, batch_size: int | None = None,
                   on_finish=None) -> list[GenerationResult]:
    """Decode every prompt with one strategy, ``batch_size`` at a time (default: all of them
    together), a waiting prompt joining as soon as a request finishes; each output is the
    target's own.

    model: Hugging Face causal LM. prompts: token ids per request (each non-empty).
    drafter: a DFlash-protocol drafter (``block_size``, ``target_layer_ids``,
    ``new_state(slots, capacity)``, ``extend(state, features, positions, counts, rows)``,
    ``draft``); unused by ``ar``. latency: a ``bastion_ext.latency.LatencyModel``
    (``caddtree`` and ``bastion`` need it). on_tokens: called with (request index, new token
    ids) as tokens are committed (streaming). on_finish: called with (request index, its new
    tokens, its round records so far) as each request finishes. Returns one result per
    prompt, in order.
    """
    batch, rounds = open_batch(model, prompts, config, drafter, latency, eos_token_ids, on_tokens, batch_size, on_finish)
    steps = Decoding(batch, rounds)
    for _ in steps:
        pass
    return steps.results


class Decoding:
    """The loop of :func:`generate_batch` over an opened ``(batch, rounds)``, one step at a
    time: iterating runs the prefill, then one round per item (a waiting prompt joining after
    it), so that a driver can step several runs in turn (``bastion bench --interleave``,
    pausing each run's clock between its steps). ``results`` holds one ``GenerationResult``
    per prompt, in order, once the iteration is over."""

    def __init__(self, batch, rounds):
        self.batch, self.rounds = batch, rounds
        self.results: list[GenerationResult] | None = None

    def __iter__(self):
        batch, rounds = self.batch, self.rounds
        rounds.clock.mark("start")
        batch.admit()
        rounds.clock.mark("prefill")
        yield
        while batch.busy:
            rounds.next(batch).step(batch)
            batch.admit()
            yield
        times = rounds.clock.finish()
        if batch.records is None:
            self.results = [GenerationResult(r.emitted, r.prompt_len, times.prefill_s, times.total_s) for r in batch.requests]
        else:
            self.results = batch.records.finish(batch.requests, batch.prompts, times,
                                                getattr(batch.drafter, "to_target_ids", lambda ids: ids))


def generate(model, prompt_ids: list[int], config: GenerationConfig, drafter=None, latency=None,
             eos_token_ids: tuple[int, ...] = (), on_tokens=None) -> GenerationResult:
    """One request: :func:`generate_batch` of ``[prompt_ids]``. on_tokens: called with each
    round's new token ids as they are committed (streaming)."""
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    stream = None if on_tokens is None else (lambda _index, new: on_tokens(new))
    return generate_batch(model, [prompt_ids], config, drafter, latency, eos_token_ids, stream)[0]
