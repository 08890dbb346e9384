"""The speedup floor of the cost-aware policies (bastion_ext.floor, bastion_ext.policy): plain
steps when no tree pays, never when trees do, the probe schedule, the reset on a paying
probe, and the plain step's cost corrected online from measured plain steps."""

import math
import random

import pytest
import torch

from bastion_ext import ops
from bastion_ext.floor import PROBE_GRID, SpeedupFloor
from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel
from bastion_ext.policy import Bastion, Fixed, GreedyStop
from bastion_ext.surrogate import AcceptCalibrator, surrogate_accept

SMOLLM2 = ModelSpec(30, 576, 9, 3, 64, 1536, 49152, element_bytes=4)
POSITIONS, VOCAB = 6, 200


def latency(draft_seconds):
    """A 2-core-CPU-like roofline: a plain step ~0.09 s, a few-node verify about the same."""
    return LatencyModel(RooflineModel(SMOLLM2, peak_flops=90e9, bandwidth=9e9, overhead=0.03), draft_seconds=draft_seconds)


def drafter_logits(kinds):
    """(B, POSITIONS, VOCAB) logits per request: "flat" (every candidate 1/VOCAB: nothing is
    likely) or "sure" (token 0 at every position with probability ~1: a deep sure path)."""
    rows = []
    for kind in kinds:
        logits = torch.zeros(POSITIONS, VOCAB)
        if kind == "sure":
            logits[:, 0] = 30.0
        rows.append(logits)
    return torch.stack(rows)


# What a tree of each kind of drafter accepts (the flat one: nothing; the sure one: its path).
REALISED = {"flat": 0, "sure": POSITIONS}


def run_rounds(policy, kinds, rounds, context=64):
    """Drive the policy as the engine does; returns each round's draft mask and estimates."""
    batch = len(kinds)
    logits = drafter_logits(kinds)
    if policy.floor is not None:  # plain steps measured as modelled (else the policy measures some)
        for _ in range(policy.latency.plain_correction.window):
            policy.observe_time(0, context, float(policy.latency.plain_modelled(context, batch)), batch)
    history = []
    accepted = [0] * batch  # of each request's previous round
    for _ in range(rounds):
        contexts = [context] * batch
        args = policy.plan(contexts)
        if any(args.draft):
            tree = policy.select(ops.build_tree(logits, 4, policy.max_nodes, context_lens=contexts, **args.kwargs()))
            n_nodes, expected = tree.n_nodes.tolist(), policy.expected_accept(tree).tolist()
            assert [n > 0 for n in n_nodes] == list(args.draft)  # requests stepping aside verify only their root
        else:  # a plain round, as the engine takes it: no tree at all
            n_nodes, expected = [0] * batch, [0.0] * batch
            assert args.latency_table is None  # nor its latency table
        estimates = policy.judge(n_nodes, expected, accepted, contexts)
        accepted = [REALISED[kind] if n else 0 for kind, n in zip(kinds, n_nodes)]
        history.append((args.draft, args.probe, estimates))
    return history


def drafted_rounds(history, request=0):
    return [r for r, (draft, _, _) in enumerate(history) if draft[request]]


@pytest.mark.parametrize("policy_type", [GreedyStop, Bastion])
def test_floor_engages_when_no_tree_pays(policy_type):
    # Drafting costs 0.1 s against a ~0.09 s plain step: the sure drafter's trees pay for the
    # batch's rounds, the flat drafter's tree does not pay for itself. (Each tree cut on its
    # own: with one budget allocated across the batch, only the round is judged, below.)
    policy = policy_type(latency(0.1), 16, batch=2, **({"batch_allocation": False} if policy_type is Bastion else {}))
    history = run_rounds(policy, ["flat", "sure"], 140)
    # The flat drafter: the first round; after that one unsure tree a probe within PROBE_GRID
    # rounds, ending on a multiple of it (two requests in flight); then waits of
    # (1 - S) / (0.48 * 0.01) = 108 plain rounds (S = 0.48, T_plain / T_round = 0.48): its probes
    # cost about 1% of the time.
    assert drafted_rounds(history, 0) == [0, 16, 128]
    assert all(history[r][1][0] for r in drafted_rounds(history, 0))  # each of them a probe
    assert all(history[r][2][0] == pytest.approx(0.482, abs=5e-3) for r in drafted_rounds(history, 0))
    # The sure drafter beside it keeps drafting every round, and its trees are estimated to pay.
    assert drafted_rounds(history, 1) == list(range(140))
    assert all(estimates[1] > 1 for _, _, estimates in history)
    assert [probe[1] for _, probe, _ in history] == [True] + [False] * 139


def test_one_budget_across_the_batch_is_judged_as_one_round():
    """Bastion's batch allocation gives the flat drafter's request what the batch can afford
    (its first node): the round pays, so both keep drafting, every estimate the round's."""
    history = run_rounds(Bastion(latency(0.1), 16, batch=2), ["flat", "sure"], 20)
    assert all(draft == (True, True) for draft, _, _ in history)
    assert all(estimates[0] == estimates[1] > 1 for _, _, estimates in history)


def test_a_round_must_pay_for_the_whole_batch():
    """A request drafting alone among four pays for its tree with its own tokens only, but the
    round's verify holds up all four: its round is judged by the batch's tokens, (4 + gain) / 4
    plain steps' worth, not by its own (1 + gain)."""
    floor = SpeedupFloor(4)
    floor.plan()
    # Round 0: requests 0-2 expect nothing (S_b = 1 / 1.5, they step aside alone), request 3
    # three tokens: the batch's round pays, (4 + 3) / 4 / 1.5 = 1.17.
    assert floor.judge([0.0, 0.0, 0.0, 3.0], [0] * 4, 1.5, 1.0) == [pytest.approx(2 / 3)] * 3 + [pytest.approx(8 / 3)]
    draft, _ = floor.plan()
    assert draft == (False, False, False, True)
    # Round 1: request 3 alone; round 0's tree accepted 1 of its 3 tokens (r = 2 / 4). Its gain
    # is its realised mean, 1 token, with its running estimate (0.8 * 3 + 0.6) / 1.8 * r = 0.83
    # standing in for one more round: 0.92 tokens, worth 1.92 / 1.5 = 1.28 of its own plain
    # steps, but (4 + 0.92) / 4 / 1.5 = 0.82 of the batch's: it steps aside too.
    gain = (1 + (0.8 * 3.0 + 0.6) / 1.8 * 2 / 4) / 2
    assert floor.judge([0.0, 0.0, 0.0, 0.6], [0, 0, 0, 1], 1.5, 1.0) == [None] * 3 + [pytest.approx((4 + gain) / 4 / 1.5)]
    assert floor.plan()[0] == (False,) * 4


@pytest.mark.parametrize("policy_type", [GreedyStop, Bastion])
def test_floor_never_engages_when_trees_pay(policy_type):
    policy = policy_type(latency(0.01), 16, batch=3)
    history = run_rounds(policy, ["sure"] * 3, 30)
    assert all(all(draft) for draft, _, _ in history)
    assert all(estimate > 1 for _, _, estimates in history for estimate in estimates)


def test_no_floor_drafts_every_round():
    policy = Bastion(latency(0.3), 16, floor=False)
    history = run_rounds(policy, ["flat"], 10)
    assert all(draft[0] for draft, _, _ in history) and all(e == [None] for _, _, e in history)
    fixed = Fixed(8).plan([64, 64])
    assert fixed.draft == (True, True) and fixed.probe == (False, False)


def test_waits_follow_the_estimate_and_a_drafter_that_turns_good_resumes():
    floor = SpeedupFloor(1, probe_cost=0.03, max_wait=8)
    good = set(range(27, 60))  # 1 token a round pays for a round of 1.5 plain steps from round 27 on
    drafted, probes = [], []
    accepted = 0  # a calibrated drafter: each tree accepts what it was expected to
    for r in range(60):
        draft, probe = floor.plan()
        expected = 1.0 if r in good else 0.0
        floor.judge([expected], [accepted], 1.5, 1.0)
        accepted = int(expected) if draft[0] else 0
        if draft[0]:
            drafted.append(r)
        if probe[0]:
            probes.append(r)
    # A probe that does not pay (S = 1 / 1.5) loses (1 - S) * 1.5 = 0.5 plain steps, so it
    # waits 0.5 / 0.03 = 17 plain rounds, capped at 8 (trees that expect nothing could not
    # pay at twice that: the whole wait). The probe at 27 expects 1 token, but the request's
    # realised mean (nothing, three probes, aged by 0.98 a round) holds its gain to 0.32
    # tokens (S = 0.88): a shorter wait. The probe at 32 adds a second token (S = 0.998): it
    # is judged again on its outcome, which pays, and the request drafts from round 34 on.
    assert drafted == [0, 9, 18, 27, 32] + list(range(34, 60))
    assert probes == [0, 9, 18, 27, 32]


def test_the_running_estimate_smooths_one_bad_round():
    floor = SpeedupFloor(1)
    floor.plan()
    assert floor.judge([3.0], [0], 2.0, 1.0) == [pytest.approx(2.0)]
    floor.plan()
    # One round the drafter is unsure (A = 0.2) after a tree that accepted its 3 expected
    # tokens: the realised mean (3) with the running estimate (0.8 * 3 + 0.2) / 1.8 = 1.44
    # standing in for one more round, 2.22 tokens, pays for a round of 2 steps: 3.22 / 2.
    assert floor.judge([0.2], [3], 2.0, 1.0) == [pytest.approx(1.6111, abs=1e-4)]
    assert floor.plan()[0] == (True,)


def test_a_confident_wrong_drafter_is_caught_by_its_outcomes():
    floor = SpeedupFloor(1)
    drafted = []
    accepted = 0
    for r in range(50):
        draft, _ = floor.plan()
        # Every tree expects 3 accepted tokens (the calibrated surrogate) and accepts none.
        floor.judge([3.0], [accepted], 1.5, 1.0)
        accepted = 0
        if draft[0]:
            drafted.append(r)
    # Round 0 looks good (4 tokens for 1.5 steps); its outcome (nothing) arrives in round 1:
    # r = 1 / (1 + 3), and the realised mean (nothing) with the estimate 3 r = 0.75 standing in
    # for one more round gives 0.375 tokens, S = 0.92: the request stops after two drafted
    # rounds. Round 1's outcome (nothing again, 5.9 expected tokens of evidence in all) sets
    # the wait: the probe at 48. By then the misses have aged 46 rounds (by 0.98 a round, to
    # 0.4 of their weight), so the probe is judged at 1.002 and drafts one more round, whose
    # miss stops it again for 44: two drafted rounds in 47 for a drafter that never pays.
    assert drafted == [0, 1, 48, 49]


def test_a_stop_is_judged_again_on_its_outcome():
    floor = SpeedupFloor(1)
    drafted, probes = [], []
    for r in range(24):
        draft, probe = floor.plan()
        # The probe at round 0 expects 0.4 tokens: 1.4 for a round of 1.5 steps does not pay
        # (S = 0.93: a wait of (1 - S) * 1.5 / 0.01 = 10 rounds, all of it from what the tree
        # expected, whatever its outcome). It accepts 2
        # (r = (2 + 1) / (0.4 + 1)), later trees nothing.
        accepted = 2 if r == 1 else 0
        floor.judge([0.4], [accepted], 1.5, 1.0)
        if draft[0]:
            drafted.append(r)
        if probe[0]:
            probes.append(r)
    # The request resumes after one plain step, its running estimate kept (no probe): its
    # realised mean, 2 tokens over one round, pays. The misses after it bring the mean down
    # until it stops again (round 5, S = 0.98); its wait, from what the trees expect (1.4
    # tokens for 1.5 steps: a loss of 0.07 steps) and what they missed (counted as far as
    # their 1.6 expected tokens are evidence), puts the next probe at round 18.
    assert drafted == [0, 2, 3, 4, 5, 18] and probes == [0, 18]


@pytest.mark.parametrize("expected, drafted", [(0.3, [0, 1, 15, 32, 50]), (3.0, [0, 1, 2, 32])])
def test_the_wait_after_a_miss_grows_with_what_the_trees_expected(expected, drafted):
    """A drafter whose every tree misses, in rounds of 1.3 plain steps. Trees that accepted
    what they expect would pay (1.3 tokens and more a round), so the whole loss is what the
    outcomes show, trusted as far as the trees expected tokens. Unsure trees (0.3 tokens): after
    the first miss (S = 0.86 on E = 0.3) the wait is about a quarter of a full one, and the
    waits grow with the misses (7, 10, 12, 13 rounds) as their evidence adds up, less what
    ages by 0.98 a round. Sure trees (3 tokens) bring 3 tokens of evidence each: near the
    full wait from the first stop."""
    floor = SpeedupFloor(1)
    rounds = []
    for r in range(60):
        draft, _ = floor.plan()
        floor.judge([expected], [0], 1.3, 1.0)
        if draft[0]:
            rounds.append(r)
    assert rounds == drafted


@pytest.mark.parametrize("accepted, drafts_again", [(0, False), (1, True)])
def test_the_measured_plain_step_judges_the_first_tree_on_its_outcome(accepted, drafts_again):
    # Round 0's tree expects 1 token in a round of 2 plain steps (S = 1: it pays, just). Round
    # 1 is the plain step the policy measures; round 0's outcome arrives there: nothing
    # (r = 1 / 2, S = 0.75) stops the request before it drafts again, its 1 token keeps it.
    # The plain round passes a round like round 0 as estimated now: T_plain measured at half
    # the estimate makes it a round of 4 plain steps, which 1 token does not pay for.
    floor = SpeedupFloor(1)
    floor.plan()
    floor.judge([1.0], [0], 2.0, 1.0)
    assert floor.plan(plain=True)[0] == (False,)
    floor.judge([0.0], [accepted], 2.0, 1.0)
    assert floor.plan()[0] == (drafts_again,)
    slower = SpeedupFloor(1)
    slower.plan()
    slower.judge([1.0], [0], 2.0, 1.0)
    slower.plan(plain=True)
    slower.judge([0.0], [1], 2.0, 0.5)
    assert slower.plan()[0] == (False,)


def test_plain_and_round_costs_are_corrected_from_measurements():
    model = latency(0.05)
    modelled_plain = float(model.plain_modelled(64))
    # Before any plain step is measured, the smallest rounds' correction stands in for it.
    assert model.plain_estimate(64) == pytest.approx(modelled_plain)
    for _ in range(5):
        model.observe(1, 64, 2 * float(model.round_seconds(1, 64)))
    assert model.plain_estimate(64) == pytest.approx(2 * modelled_plain, rel=1e-6)
    assert model.round_estimate(1, 64) == pytest.approx(2 * float(model.round_seconds(1, 64)), rel=1e-6)
    # The floor takes the lower of that stand-in and the uncorrected model: a plain estimate
    # too high would never be corrected, since the floor measures plain steps by taking them.
    policy = Bastion(model, 16)
    assert policy.plain_seconds([64]) == pytest.approx(modelled_plain, rel=1e-6)
    # Then measured plain steps take over.
    for _ in range(5):
        policy.observe_time(0, 64, 0.5 * modelled_plain)
    assert policy.plain_seconds([64]) == pytest.approx(0.5 * modelled_plain, rel=1e-6)


def test_floor_follows_the_measured_costs():
    # The model thinks drafting is free, so the flat drafter's one-node trees pay ...
    policy = GreedyStop(latency(0.0), 16)
    assert all(draft[0] for draft, _, _ in run_rounds(policy, ["flat"], 3))
    # ... until measured rounds turn out three times a measured plain step.
    plain = float(policy.latency.plain_modelled(64))
    for _ in range(4):
        policy.observe_time(0, 64, plain)
        policy.observe_time(1, 64, 3 * plain)
    history = run_rounds(policy, ["flat"], 6)
    assert history[0][2][0] < 0.5 and drafted_rounds(history) == [0]


def test_a_request_joining_a_slot_starts_afresh_and_the_others_keep_their_state():
    policy = GreedyStop(latency(0.1), 16, batch=3)
    run_rounds(policy, ["flat", "sure", "flat"], 1)
    assert policy.plan([64] * 3, live=(False, True, True)).draft == (False, True, False)  # slot 0 left
    policy.reset([0])
    args = policy.plan([64] * 3)
    assert args.draft == (True, True, False) and args.probe == (True, False, False)
    with pytest.raises(ValueError, match="live"):
        policy.plan([64] * 3, live=(True, True))


def test_a_request_joining_a_waiting_batch_probes_with_it():
    """Both requests stopped: one leaving (or both) does not make the newcomer probe alone, at
    once; it probes in the round the batch would have. One request drafting on: it probes at once."""
    stopped = Bastion(latency(0.3), 8, batch=2)
    run_rounds(stopped, ["flat", "flat"], 2)
    waits = list(stopped.floor._wait)
    assert min(waits) > 1
    stopped.reset([0, 1])
    schedule = [stopped.plan([64, 64]).draft for _ in range(min(waits) + 1)]
    assert schedule == [(False, False)] * min(waits) + [(True, True)]
    alone = Bastion(latency(0.3), 8, batch=2)
    run_rounds(alone, ["flat", "flat"], 2)
    alone.reset([1])
    assert alone.plan([64, 64]).draft == (False, False)
    paying = GreedyStop(latency(0.1), 16, batch=2)
    run_rounds(paying, ["flat", "sure"], 3)
    paying.reset([0])
    assert paying.plan([64, 64]).draft == (True, True)


def test_requests_leaving_before_their_stop_is_judged_again_leave_nothing_to_judge():
    """The round that stops a batch is judged again when its outcomes come, a round later; if
    every request of it has left by then (and new ones took the slots), there is nothing to
    judge, and the newcomers' rounds go on (the joining test hit a division by zero here)."""
    policy = Bastion(latency(0.3), 8, batch=2)
    history = run_rounds(policy, ["flat", "flat"], 1)
    assert history[0][0] == (True, True) and history[0][2][0] < 1.0  # the probe stopped both
    policy.reset([0, 1])
    history = run_rounds(policy, ["flat", "flat"], 4)
    assert all(estimate is None or estimate < 1.0 for _, _, estimates in history for estimate in estimates)


def test_a_plain_round_leaves_nothing_for_the_next_select():
    policy = Bastion(latency(0.3), 8, batch=2)
    run_rounds(policy, ["flat", "flat"], 2)
    assert policy.plan([64, 64]).draft == (False, False)  # no select follows a plain round
    policy.reset([1])
    for _ in range(policy.floor.max_wait + 1):  # plain rounds until the batch's next probe
        args = policy.plan([64, 64], live=(False, True))
        if args.draft[1]:
            break
    assert args.draft == (False, True)
    tree = policy.select(ops.build_tree(drafter_logits(["flat", "flat"]), 4, 8, context_lens=[64, 64], **args.kwargs()))
    assert tree.n_nodes.tolist()[0] == 0 and tree.n_nodes.tolist()[1] > 0


def test_plain_rows_leave_the_calibration_alone():
    calibrator = AcceptCalibrator(2)
    calibrator.observe(torch.tensor([2.0, 2.0]), torch.tensor([1, 1]))
    before = calibrator.scale.clone()
    for _ in range(20):
        calibrator.observe(torch.tensor([0.0, 2.0]), torch.tensor([0, 1]), torch.tensor([False, True]))
    assert float(calibrator.scale[0]) == pytest.approx(float(before[0]))
    assert float(calibrator.scale[1]) < float(before[1])
    tree = ops.build_tree(drafter_logits(["sure", "sure"]), 4, 8, policy="fixed", budgets=[8, 8])
    cut = tree.cut(torch.tensor([0, 8], dtype=torch.int32))
    assert surrogate_accept(cut.scores, cut.n_nodes)[0] == 0.0
    assert int(cut.first_child[0, 0]) == -1  # the walk stops at the root: a plain step


def test_bad_floor_arguments_raise_value_error():
    with pytest.raises(ValueError, match="probe_cost"):
        SpeedupFloor(1, probe_cost=0.0)
    with pytest.raises(ValueError, match="max_wait"):
        SpeedupFloor(1, max_wait=0)
    with pytest.raises(ValueError, match="smoothing"):
        SpeedupFloor(1, smoothing=1.0)
    with pytest.raises(ValueError, match="expected_accept"):
        SpeedupFloor(2).judge([0.0], [0, 0], 1.0, 1.0)
    with pytest.raises(ValueError, match="prior"):
        SpeedupFloor(1, prior=0.0)
    with pytest.raises(ValueError, match="context_lens"):
        GreedyStop(latency(0.0), 8, batch=2, calibrate=False).plan([64, 64, 64])


def test_the_second_round_measures_a_plain_step_until_one_is_measured():
    """The plain step's time is the model's guess until one is measured, and the floor measures
    plain steps only by taking them: the second round is plain; once measured, never forced."""
    policy = Bastion(latency(0.01), 16)
    drafts = [policy.plan([64]).draft for _ in range(3)]
    assert drafts == [(True,), (False,), (True,)]
    measured = Bastion(latency(0.01), 16)
    measured.observe_time(0, 64, 0.05)
    assert [measured.plan([64]).draft for _ in range(3)] == [(True,)] * 3


def test_a_round_is_judged_at_the_mean_tree_size():
    """The floor's gains are means over the trees so far, so the policy passes the time of a
    round of their mean size (weights 0.98 a round, as the realised mean's): a confident
    round's big tree, set against them alone, looked slower than it is."""
    policy = Bastion(latency(0.05), 16, calibrate=False)
    policy.observe_time(0, 64, float(policy.latency.plain_modelled(64)))
    passed = []
    judge = policy.floor.judge
    policy.floor.judge = lambda *args, **kwargs: passed.append(args[2]) or judge(*args, **kwargs)
    for nodes in (1, 1, 1, 14):
        assert policy.plan([64]).draft == (True,)
        policy.judge([nodes], [3.0], [3], [64])
    weights = [0.98 ** 3, 0.98 ** 2, 0.98, 1.0]
    mean = sum(w * n for w, n in zip(weights, (1, 1, 1, 14))) / sum(weights)
    assert passed[-1] == pytest.approx(policy.latency.round_estimate(mean, 64))
    assert passed[-1] < policy.latency.round_estimate(14, 64)


def test_plain_steps_are_measured_while_a_run_of_trees_lasts_until_a_few_are_held():
    """The plain step's time is measured only by taking one: while fewer than PLAIN_SAMPLES of
    them are measured (a fresh cache's first ones run cold), a run of PLAIN_EVERY drafted
    rounds is followed by one; then trees that pay draft every round."""
    from bastion_ext.policy import PLAIN_EVERY, PLAIN_SAMPLES

    policy = Bastion(latency(0.01), 16)
    drafts = []
    for _ in range((PLAIN_SAMPLES + 2) * (PLAIN_EVERY + 1)):
        draft = policy.plan([64]).draft[0]
        drafts.append(draft)
        policy.observe_time(0 if not draft else 4, 64, 0.05)
    plain = [r for r, draft in enumerate(drafts) if not draft]
    assert plain == [1 + i * (PLAIN_EVERY + 1) for i in range(PLAIN_SAMPLES)]


def test_a_plain_step_is_measured_only_where_its_error_could_flip_the_estimate():
    """The runs of trees are broken by a plain step only while an error of PLAIN_ERROR in
    T_plain could bring the last estimate under 1: trees estimated well above that draft on
    (the first plain step, whatever the trees, still measures T_plain)."""
    from bastion_ext.policy import PLAIN_ERROR, PLAIN_EVERY

    def plain_rounds(estimate):
        policy = Bastion(latency(0.01), 16)
        policy.floor.judge = lambda *args, **kwargs: [estimate]
        plain = []
        for r in range(3 * PLAIN_EVERY):
            draft = policy.plan([64]).draft[0]
            policy.judge([4 if draft else 0], [1.0], [0], [64])
            policy.observe_time(4 if draft else 0, 64, 0.05)
            plain += [] if draft else [r]
        return plain

    assert plain_rounds(1.1) == [1, PLAIN_EVERY + 2, 2 * PLAIN_EVERY + 3]
    assert plain_rounds(1.0 / (1.0 - PLAIN_ERROR) + 0.01) == [1]


@pytest.mark.parametrize("seed", range(40))
def test_any_sequence_of_plans_judgements_and_joins_keeps_the_floor_whole(seed):
    """Random batches, live masks, forced plain rounds, token limits, surrogates, outcomes, times and
    admissions (the engine's timings choose the path, so CI's machine takes paths this one
    does not): no error, waits within bounds, an estimate exactly for the requests that drafted."""
    rng = random.Random(seed)
    batch = rng.choice([1, 2, 3, 4])
    floor = SpeedupFloor(batch)
    limits = None if seed % 3 == 0 else [rng.randint(1, 300) for _ in range(batch)]  # tokens left per request
    for _ in range(200):
        live = tuple(rng.random() < 0.85 for _ in range(batch))
        remaining = limits and [max(limit - 1, 0) for limit in limits]
        limits = remaining
        draft, _ = floor.plan(live, plain=rng.random() < 0.05, remaining=remaining)
        expected = [rng.choice([0.0, 1e-4, 5 * rng.random()]) for _ in range(batch)]
        accepted = [rng.randint(0, 6) for _ in range(batch)]
        estimates = floor.judge(expected, accepted, rng.choice([1e-4, 0.05, 1.0]), rng.choice([1e-4, 0.05]),
                                each=rng.random() < 0.5)
        assert [e is not None for e in estimates] == list(draft)
        assert all(math.isfinite(e) and e >= 0 for e in estimates if e is not None)
        assert all(0 <= wait <= floor.max_wait + PROBE_GRID for wait in floor._wait)
        if rng.random() < 0.2:
            joining = rng.sample(range(batch), rng.randint(1, batch))
            floor.reset(joining)
            for slot in joining if limits else ():
                limits[slot] = rng.randint(1, 300)


def test_judge_takes_the_plain_step_estimate_the_caller_has():
    """The engine asks for ``plain_seconds`` every round for its records and hands it to
    ``judge``: the same estimates as the policy's own, and a different one is the one used."""
    own, given, halved = (Bastion(latency(0.1), 8) for _ in range(3))
    for policy in (own, given, halved):
        run_rounds(policy, ["flat"], 1)
    plain = own.plain_seconds([64])
    estimates = [policy.judge([4], [0.5], [0], [64], *seconds) for policy, seconds in ((own, ()), (given, (plain,)), (halved, (plain / 2,)))]
    assert estimates[0] == estimates[1] and estimates[2][0] < estimates[1][0]


def test_a_stop_on_one_unsure_tree_waits_a_probe_grid_at_most():
    """One flat tree says how unsure the drafter was at one position: the stop it causes waits
    PROBE_GRID rounds at most, and so does its review when the tree's outcome (nothing, of
    next to nothing expected) comes. A second flat tree, or a first confident tree that missed
    (evidence), stops for the full wait."""
    flat = SpeedupFloor(1)
    flat.plan()
    flat.judge([0.001], [0], 2.0, 1.0)  # a round twice a plain step: S = 0.5
    assert flat._wait[0] == PROBE_GRID
    flat.plan()
    flat.judge([0.0], [0], 2.0, 1.0)  # a plain round: the review
    assert flat._wait[0] == PROBE_GRID - 1
    while not flat.plan()[0][0]:
        flat.judge([0.0], [0], 2.0, 1.0)
    flat.judge([0.001], [0], 2.0, 1.0)  # the second flat tree
    assert flat._wait[0] > 4 * PROBE_GRID
    wrong = SpeedupFloor(1)
    wrong.plan()
    assert wrong.judge([2.5], [0], 2.0, 1.0) == [pytest.approx(1.75)]  # sure of 2.5 tokens: drafts on
    wrong.plan(plain=True)
    wrong.judge([0.0], [0], 2.0, 1.0)  # it accepted none of them: a stop on evidence
    assert wrong._wait[0] > 4 * PROBE_GRID


def test_a_request_near_its_limit_ends_in_plain_steps():
    """A stop's wait spaces the probes; a request with fewer than that many rounds left after
    its next probe, none of whose rounds has paid, takes no probe: it ends in plain steps. Far from its limit, or with no limit
    given, it probes after the wait; the review of the stop a round later keeps to the rule;
    a request joining its slot starts afresh."""
    def stopped(remaining):
        floor = SpeedupFloor(1)
        floor.plan(remaining=remaining)
        floor.judge([0.1], [0], 1.0, 1.0)  # a flat tree in a round as quick as a plain step
        floor.plan(remaining=remaining)
        floor.judge([0.1], [0], 2.0, 1.0)  # a second in a round twice a plain step: a stop
        return floor

    def first_probe(floor, remaining):
        for i in range(remaining):
            if floor.plan(remaining=[remaining - i])[0][0]:
                return i
        return None
    wait = stopped(None)._wait[0]
    assert 1 < wait < 200 and stopped([1000])._wait[0] == wait
    assert first_probe(stopped([2 * wait]), 2 * wait - 1) == wait
    near = stopped([2 * wait - 1])
    assert near._wait[0] == wait
    near.plan(remaining=[2 * wait - 2])
    near.judge([0.0], [0], 2.0, 1.0)  # the review: the flat tree accepted nothing
    assert first_probe(near, 2 * wait - 3) is None
    near.reset([0])
    assert near.plan(remaining=[500])[0] == (True,)
    # A request one of whose rounds paid (3 tokens in a round of two plain steps), stopped by
    # misses near its limit: it still probes after its wait (such drafters resume).
    paid = SpeedupFloor(1)
    for left, accepted in zip(range(40, 0, -1), [0, 3] + [0] * 38):
        if paid.plan(remaining=[left])[0] == (False,):
            break
        paid.judge([3.0], [accepted], 2.0, 1.0)
    assert left - paid._wait[0] < paid._wait[0] and not paid._ends_plain[0]
    with pytest.raises(ValueError, match="remaining"):
        SpeedupFloor(2).plan(remaining=[5])
