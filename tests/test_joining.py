"""Requests that join a running batch (issue 20): a waiting prompt takes the slot of a request
that finished, its prefill into that slot alone; outputs stay each request's own, no cache or
buffer moves, the round still reads the host once, and every phase of a round runs alone."""

import pytest
import torch

from host_reads import count_host_reads
from sampled_equality import assert_equal_up_to_sampling_rounding

from bastion.engine import STRATEGIES, GenerationConfig, generate, generate_batch, open_batch
from bastion.engine.rounds import PlainRound, Rounds, TreeRound

PROMPTS = 5
TOKENS = 24


@pytest.fixture(scope="module")
def drafter(smollm2):
    from bastion.drafter import load_drafter

    return load_drafter(None, smollm2[0])


@pytest.fixture(scope="module")
def stopping(eval_ar_outputs):
    """(prompts, a stop token, each prompt's batch-1 ar output with it): the stop token is one
    of the first answer's early tokens, so the answers end at different lengths and requests
    leave (and others join) mid-run."""
    prompts = [ids for ids, _ in eval_ar_outputs[:PROMPTS]]
    eos = (eval_ar_outputs[0][1][6],)
    return prompts, eos


@pytest.fixture(scope="module")
def batch1_ar(smollm2, stopping):
    """Each prompt's batch-1 ar output with the stop token (computed once for the module)."""
    prompts, eos = stopping
    config = GenerationConfig(strategy="ar", max_new_tokens=TOKENS)
    return [generate(smollm2[0], p, config, eos_token_ids=eos).tokens for p in prompts]


@pytest.mark.model
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_requests_joining_mid_run_equal_their_batch1_ar(smollm2, stopping, batch1_ar, drafter, cpu_latency, strategy):
    model, _ = smollm2
    prompts, eos = stopping
    expected = batch1_ar
    assert len({len(t) for t in expected}) > 1, "the answers must end at different lengths"
    config = GenerationConfig(strategy=strategy, max_new_tokens=TOKENS, budget=8)
    finished = []
    results = generate_batch(model, prompts, config, drafter=drafter, latency=cpu_latency, eos_token_ids=eos, batch_size=2,
                             on_finish=lambda index, tokens, rounds: finished.append((index, list(tokens))))
    assert [r.tokens for r in results] == expected
    assert sorted(finished) == list(enumerate(expected))


@pytest.mark.model
def test_sampling_with_joining_equals_all_at_once(smollm2, stopping, drafter, cpu_latency):
    """At T > 0 a token's uniform is keyed by its request and position, never its slot (the
    two runs' tokens part only where a uniform lies within rounding of a CDF interval's end)."""
    model, _ = smollm2
    prompts, eos = stopping
    config = GenerationConfig(strategy="bastion", max_new_tokens=TOKENS, temperature=0.8, seed=5)
    together = generate_batch(model, prompts, config, drafter=drafter, latency=cpu_latency, eos_token_ids=eos)
    joining = generate_batch(model, prompts, config, drafter=drafter, latency=cpu_latency, eos_token_ids=eos, batch_size=2)
    assert_equal_up_to_sampling_rounding(model, prompts, [r.tokens for r in together], [r.tokens for r in joining], config)


def storage(batch) -> dict[str, int]:
    """Where every tensor of the target cache, the drafter state and the round buffers lives."""
    tensors = {"kv": batch.target.cache.kv, "lengths": batch.target.cache.lengths, "live": batch.target.live,
               "drafter keys": batch.state.keys, "drafter values": batch.state.values, "drafter lengths": batch.state.lengths,
               "roots": batch.roots, "pending": batch.pending, "request ids": batch.request_ids,
               "target argmax": batch.buffers.target_argmax, "uniforms": batch.buffers.uniforms}
    tensors.update({f"tree {name}": t for name, t in batch.buffers.tree.tensors().items()})
    tensors.update({f"result {name}": getattr(batch.buffers.result, name) for name in ("accepted_nodes", "accept_len", "bonus")})
    if batch.target._verify_mask is not None:
        tensors["verify mask"] = batch.target._verify_mask
    return {name: t.untyped_storage().data_ptr() for name, t in tensors.items()}


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["ddtree", "bastion"])
def test_joining_and_leaving_move_no_storage_and_read_the_host_once_per_round(smollm2, stopping, batch1_ar, drafter,
                                                                               cpu_latency, strategy, monkeypatch):
    model, _ = smollm2
    prompts, eos = stopping
    expected = batch1_ar
    seen, rounds_started = [], []
    next_round = Rounds.next

    def watched(self, batch):
        seen.append((storage(batch), tuple(r and r.index for r in batch.slots)))
        rounds_started.append(1)
        return next_round(self, batch)

    monkeypatch.setattr(Rounds, "next", watched)
    reads = count_host_reads(monkeypatch)
    config = GenerationConfig(strategy=strategy, max_new_tokens=TOKENS, budget=8)
    results = generate_batch(model, prompts, config, drafter=drafter, latency=cpu_latency, eos_token_ids=eos, batch_size=2)
    monkeypatch.undo()
    assert [r.tokens for r in results] == expected
    assert len(reads) == len(rounds_started), f"{len(reads)} host reads in {len(rounds_started)} rounds: {sorted(set(reads))}"
    occupants = [slots for _, slots in seen]
    assert len(set(occupants)) >= PROMPTS - 1, "requests must have left and joined"
    first = seen[1][0]  # the verify mask exists from the first verify on
    for pointers, slots in seen[1:]:
        assert pointers == first, f"storage moved with slots {slots}"


@pytest.mark.model
def test_every_phase_of_a_round_runs_alone(smollm2, eval_ar_outputs, drafter):
    """A ddtree round phase by phase: draft, build, the read, verify, accept, commit, then a
    plain round's forward (its context held for the drafter until flushed); the committed
    tokens are each request's ar tokens."""
    model, _ = smollm2
    cases = eval_ar_outputs[:2]
    config = GenerationConfig(strategy="ddtree", max_new_tokens=TOKENS, budget=8, stop_on_eos=False)
    batch, rounds = open_batch(model, [ids for ids, _ in cases], config, drafter=drafter)
    batch.admit()
    tree_round = rounds.next(batch)
    assert isinstance(tree_round, TreeRound)
    logits = tree_round.draft(batch)
    assert logits.shape == (2, drafter.block_size - 1, drafter.draft_vocab_size)
    tree = tree_round.build(batch, logits)
    assert tree.n_nodes.tolist() == [8, 8]
    values = batch.read(tree.n_nodes.long()[:, None])
    assert values == [[8], [8]] and [r.emitted for r in batch.requests] == [expected[:1] for _, expected in cases]
    verify_logits, features = batch.target.verify(tree, batch.roots, 8)
    result = tree_round.accept(batch, tree, 8, verify_logits)
    tree_round.commit(batch, tree, result, features)
    batch.read()
    done = [len(r.emitted) for r in batch.requests]
    assert [r.emitted for r in batch.requests] == [expected[:n] for (_, expected), n in zip(cases, done)]
    assert batch.target.lengths.tolist() == [len(ids) + n - 1 for (ids, _), n in zip(cases, done)]
    PlainRound(rounds.clock, None).forward(batch)
    batch.read()
    assert [r.emitted for r in batch.requests] == [expected[:n + 1] for (_, expected), n in zip(cases, done)]
    assert batch.held.held == 1 and torch.equal(batch.state.lengths + 1, batch.target.lengths)
    batch.flush_held()  # the plain step's context reaches the drafter before it drafts again
    assert batch.held.held == 0 and torch.equal(batch.state.lengths, batch.target.lengths)


def test_a_paused_clock_leaves_the_time_away_out(monkeypatch):
    """RoundClock.pause .. resume: the span between is not the run's (``total_s``); the rounds
    and the prefill keep their own marks."""
    from bastion.engine import records

    now = iter([0.0, 1.0, 2.0, 9.0, 10.0, 11.0, 12.0])  # start, prefill, pause, resume, round, commit, end
    monkeypatch.setattr(records.time, "perf_counter", lambda: next(now))
    clock = records.RoundClock("cpu")
    clock.mark("start")
    clock.mark("prefill")
    clock.pause()
    assert clock.paused
    clock.resume()
    assert not clock.paused
    clock.mark("round")
    clock.mark("commit")
    clock.end_round("tag")
    assert clock.finished() == [("tag", 1.0)]
    times = clock.finish()
    assert (times.prefill_s, times.total_s) == (1.0, 12.0 - 7.0)  # 7 s away


@pytest.mark.model
def test_runs_stepped_in_turn_equal_their_own_runs_and_time_their_own_rounds(smollm2, stopping, batch1_ar, drafter,
                                                                             cpu_latency):
    """``bastion bench --interleave``: ar and bastion stepped one round each in turn give each
    run's own tokens, and each run's time is its own: the two add up to the wall time at
    most, and bastion's is its prefill and its rounds, give or take the steps' bookkeeping."""
    import time

    from bastion.bench import run_interleaved

    model, _ = smollm2
    prompts, eos = stopping
    longest = max(range(PROMPTS), key=lambda i: len(batch1_ar[i]))  # one request: its records are every round
    configs = {s: GenerationConfig(strategy=s, max_new_tokens=TOKENS, budget=8) for s in ("ar", "bastion")}
    start = time.perf_counter()
    outputs = run_interleaved(model, [prompts[longest]], configs, drafter, cpu_latency, eos)
    wall = time.perf_counter() - start
    for results in outputs.values():
        assert [r.tokens for r in results] == [batch1_ar[longest]]
    assert outputs["ar"][0].total_s + outputs["bastion"][0].total_s <= wall
    bastion = outputs["bastion"][0]
    own = bastion.prefill_s + sum(r["t_draft"] + r["t_build"] + r["t_verify"] + r["t_commit"] for r in bastion.rounds)
    assert own <= bastion.total_s <= 1.1 * own + 0.05
