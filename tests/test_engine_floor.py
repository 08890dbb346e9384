"""The speedup floor in the decoding loop on the embedded target (issue 21): a drafter that
never pays makes bastion take plain steps (a handful of probes), a perfect one never does,
a batch mixes both per request, and every output stays ar's, greedy and sampled."""

import dataclasses

import pytest

from bastion_ext.latency import OnlineCorrection

from bastion.drafter.oracle import OracleDrafter
from bastion.engine import GenerationConfig, generate, generate_batch
from conftest import chat_ids
from sampled_equality import assert_equal_up_to_sampling_rounding
from test_engine import PROMPTS, random_dflash_drafter

NEW_TOKENS = 48


@pytest.fixture(scope="module")
def references(smollm2):
    """(prompt ids, ar's greedy tokens) per prompt."""
    model, tokenizer = smollm2
    config = GenerationConfig(strategy="ar", max_new_tokens=NEW_TOKENS, stop_on_eos=False)
    return [(ids, generate(model, ids, config).tokens) for ids in (chat_ids(tokenizer, text) for text in PROMPTS)]


def fresh(latency):
    """The shared latency model without what other tests' rounds taught its online corrections."""
    return dataclasses.replace(latency, correction=OnlineCorrection(), plain_correction=OnlineCorrection())


def drafted(result):
    return [r["round"] for r in result.rounds if r["n_nodes"] > 0]


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["bastion", "caddtree"])
def test_a_drafter_that_never_pays_falls_back(smollm2, references, cpu_latency, strategy):
    """Random weights accept nothing: after the first rounds only probes draft, as many rounds
    apart as a probe loses plain steps over 0.01, at most 128, at batch 1 and with two requests
    together."""
    model, tokenizer = smollm2
    drafter = random_dflash_drafter(model, tokenizer)
    config = GenerationConfig(strategy=strategy, max_new_tokens=NEW_TOKENS, stop_on_eos=False)
    ids, greedy = references[0]
    result = generate(model, ids, config, drafter=drafter, latency=fresh(cpu_latency))
    assert result.tokens == greedy
    summary = result.summary()
    assert summary["drafted_rounds"] <= 6 and summary["probes"] <= 5, drafted(result)
    assert summary["plain_rounds"] >= len(result.rounds) - 6 and summary["estimated_speedup"] is not None
    assert all(r["accept_len"] == 0 for r in result.rounds if r["n_nodes"] == 0)
    pair = references[1:3]
    results = generate_batch(model, [ids for ids, _ in pair], config, drafter=drafter, latency=fresh(cpu_latency))
    for (_, expected), result in zip(pair, results):
        assert result.tokens == expected
        assert len(drafted(result)) <= 6, drafted(result)


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["bastion", "caddtree"])
def test_a_perfect_drafter_never_falls_back(smollm2, references, cpu_latency, strategy):
    """The oracle drafts the target's own greedy tokens: every round drafts and pays, but for
    round 1, the one plain step the policy measures (its plain-step time is a guess until then)."""
    model, _ = smollm2
    drafter = OracleDrafter([ids + greedy for ids, greedy in references], model.config.vocab_size, hit=1.0, second=0.0)
    config = GenerationConfig(strategy=strategy, max_new_tokens=NEW_TOKENS, stop_on_eos=False)
    results = generate_batch(model, [ids for ids, _ in references], config, drafter=drafter, latency=fresh(cpu_latency))
    for (_, expected), result in zip(references, results):
        assert result.tokens == expected
        assert [r["round"] for r in result.rounds if r["n_nodes"] == 0] == [1]
        assert all(r["estimated_speedup"] > 1 for r in result.rounds if r["n_nodes"] > 0)
        assert result.summary()["plain_rounds"] == 1 and result.summary()["probes"] == 1


@pytest.mark.model
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_mixed_batch_steps_aside_per_request(smollm2, references, cpu_latency, temperature):
    """Request 0 has the oracle (its greedy continuation), request 1 only noise: at T = 0
    request 0 drafts every round while request 1 verifies just its root in some of them, and
    both emit ar's tokens (at T = 0.8 those of ar on the same batch and seed, each request
    keeping the uniforms of its index, up to a uniform within rounding of its token's CDF
    interval's end: the floor's timing-driven rounds change the forwards' shapes from run to
    run). (The noise drafter costs next to nothing, so once alone request 1's one-node probes
    may pay as well as plain steps: no bound on them here.) Each tree is cut on its own: with
    one budget across the batch the allocation sizes request 1's tree, and the floor judges
    the round as one."""
    model, _ = smollm2
    (ids0, greedy0), (ids1, _) = references[:2]
    drafter = OracleDrafter([ids0 + greedy0, []], model.config.vocab_size, hit=1.0, second=0.0)
    config = GenerationConfig(strategy="bastion", max_new_tokens=NEW_TOKENS, stop_on_eos=False, temperature=temperature, seed=3,
                              batch_allocation=False)
    ar = generate_batch(model, [ids0, ids1], dataclasses.replace(config, strategy="ar"))
    first, second = generate_batch(model, [ids0, ids1], config, drafter=drafter, latency=fresh(cpu_latency))
    if temperature > 0:
        assert_equal_up_to_sampling_rounding(model, [ids0, ids1], [r.tokens for r in ar], [first.tokens, second.tokens], config)
    else:
        assert (first.tokens, second.tokens) == (ar[0].tokens, ar[1].tokens)
        assert drafted(first) == [r for r in range(len(first.rounds)) if r != 1]  # round 1: the measured plain step
        mixed = [r for r in range(len(first.rounds)) if not second.rounds[r]["drafted"]]
        assert mixed, drafted(second)
    # In the rounds request 1 stepped aside, it took one token.
    assert all(r["accept_len"] == 0 for r in second.rounds if not r["drafted"])
