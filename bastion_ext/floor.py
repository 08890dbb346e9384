"""The speedup floor: draft only while a round of trees is estimated to beat a plain step.

A round with a tree costs the drafter forward, the build and a verify of the root and the
nodes; a plain step costs a forward of the root alone. When the best tree's estimated
tokens per round do not pay for that difference, the request steps aside (verifies only its
root) for a while and then probes again: one drafted round, whose estimate decides whether it
keeps drafting. A round at S < 1 (S = tokens per second against a plain step's) loses
(1 - S) T_round / T_plain plain steps, so the wait after it is that over probe_cost rounds,
S the lower of its estimate and what the request's recent trees realised: a drafter that
never pays costs a few probes per hundred tokens, about ``probe_cost`` of the time, and one
estimated near 1 is tried again soon, since its probes cost next to nothing and it may well
pay. The part of that loss which only the outcomes show (trees accepting less than they
expect) counts 1 - exp(-E / prior), E the tokens the request's trees expected so far: the
first misses of unsure trees are little evidence (a committed drafter's first chat tree
expected 0.26 tokens, its later ones accepted 0.55 a round, and a full wait after that one
miss held it in plain steps for 50 rounds).

The estimate of a round in which the requests D draft, out of the L in flight:

    S = (L + sum over b in D of g_b) / L * T_plain / T_round,
    g_b = (R_b + prior * Ā_b * r_b) / (N_b + prior)

(one request: S = (1 + g) * T_plain / T_round). The round's verify is paid by every
request in flight, so it is judged by the batch's tokens: a request's tree that pays for
itself alone can still make the batch slower than its plain step. When S < 1 every request
of D steps aside for the same wait, so that they probe together and the rounds between are
plain steps of the whole batch (no drafter forward, a verify of the roots alone).

Ā_b is the surrogate A of its trees (the drafter's own sum of path probabilities), a mean
over its consecutive drafted rounds with fading weights (a probe starts afresh).
r_b = (R_b + prior) / (E_b + prior) calibrates it from the realised accepted lengths R_b
against the surrogates E_b of the same trees, over N_b outcomes (which arrive one round after
each tree; the sums age by 0.98 every round, plain ones too: a window of about fifty rounds).
It is the only calibration: the trees' own ``accept_scale`` learns from the same outcomes, and
a second ratio on top of it counted each early miss twice (one miss of a confident first tree
stopped a drafter that went on to pay 1.3x, for twenty rounds). The prior, one token on each
side, keeps one miss of a drafter that expects a token or so from stopping it; a drafter that
is confident and wrong (a random one's surrogate says 2 to 3 tokens) runs up E_b, and so the
evidence, by that much a round, and stops within two drafted rounds.

The gain g_b is the request's realised mean, the running estimate Ā_b r_b standing in for
``prior`` more rounds (all of it before the first outcome). The decision is about the rounds
to come, and they regress to the request's mean: the committed drafter's accepted lengths are
nearly independent from round to round within a request (autocorrelation 0.05 at lag 1 and
0.02 at lag 2 over the 12 prompts of a ``bench/bench_floor.py`` run; variance 0.40 a round,
0.02 between prompts' means), and an oracle that knows the next token a quarter of the time
is independent by construction. Judged by its last rounds alone (Ā over about five, r over
ten), runs of misses stopped requests whose trees paid on average, and the probes, one tree
each, mostly a flat one, waited twenty rounds: the floor cost 8.6% of bastion's speed where
that oracle's trees paid 1.11x (4.2% now). T_round is that of a round of the mean tree size
over the same rounds (the policy's ``judge``): set against a mean of gains, this round's tree
alone stopped requests on their most confident rounds. The larger of the running estimate
and the mean (0f1e475) leaned high at batch 4, where trees do not pay on the CPU (an
estimated 0.96 and 1.05 for rounds that realised 0.86 and 0.84): the larger of two noisy
estimates is above both on average. The mean with the estimate as its prior did not (0.81
against 0.78; the running estimate alone: 0.85 against 0.82).

A stop that rests on a request's first tree alone, whose outcome says little (it expected
less than ``prior`` tokens: a flat tree, the drafter unsure at that one position), waits
``PROBE_GRID`` rounds at most: one tree tells how sure the drafter was there, not how sure it
will be. An oracle drafter in fp32 on an AVX2 CPU, whose trees paid 1.75x and whose first tree
was flat one time in five, waited 60 rounds after one (a prompt 39% slower than without the
floor); a drafter whose trees never pay takes one more probe for it.

A wait is set for an unbounded request. A request whose token limit is near (``plan``'s
``remaining``), and none of whose rounds has paid yet (realised), ends in plain steps when
fewer rounds than the wait would follow its next probe: that probe's outcome could pay back
over fewer rounds than the wait that spaces the probes (the window in which probes keep to
``probe_cost``), so it would cost more than its share. A quarter of a batch of 4's probes on
the CPU came in the last 20 of its 128 rounds. A drafter whose trees have paid is stopped by
runs of misses and resumes, often late: skipping its last probes too ended 4 to 7 of 18
prompts in plain steps where trees pay (bf16 on the CPU), most of which had resumed and paid
without the rule; and what its trees expect is no bound (the committed drafter's accept more
than they expect).

A round that stops drafting is judged again when its outcomes arrive (the next round, a plain
one): if what they accepted makes the mean pay, its requests draft again after that one plain step,
so a probe is judged by what it accepted, not only by the estimate made before it; if not,
its wait is set again from that evidence. A plain round judges with T_round estimated then,
beside the T_plain measured by then: a fresh process's first round is estimated by the
uncorrected model, and judging it again against a measured plain step made trees that paid
look like 0.7x.

Host-side state only: every decision is made from numbers the host already holds (the
round's one read and the latency model), so the floor adds no device sync.
"""

from __future__ import annotations

import math


PROBE_GRID = 8  # with several requests in flight, probes fall on rounds that are multiples of it


class SpeedupFloor:
    """Which requests draft each round.

    Parameters
    ----------
    batch : int
        Request slots.
    probe_cost : float
        The share of the time a drafter that never pays may spend in probes (sets the waits).
    max_wait : int
        The longest wait between probes (caps the cost of noticing that a drafter got good).
        128: a probe of a batch of 4 on the CPU loses 0.8 plain steps, and a cap of 64 put
        its probes at 1.25% of the time, over ``probe_cost``.
    smoothing : float
        Weight of the past in the running surrogate Ā.
    decay : float
        Weight of the past, a round ago, in the realised / expected sums of r and of the
        realised mean.
    prior : float
        Tokens added to each side of r (r starts at 1, and moves by evidence of a few tokens),
        and rounds of the running estimate added to the realised mean.
    """

    def __init__(self, batch: int, probe_cost: float = 0.01, max_wait: int = 128, smoothing: float = 0.8,
                 decay: float = 0.98, prior: float = 1.0):
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if not 0.0 < probe_cost < 1.0:
            raise ValueError(f"probe_cost must be in (0, 1), got {probe_cost}")
        if not isinstance(max_wait, int) or max_wait < 1:
            raise ValueError(f"max_wait must be an int >= 1, got {max_wait!r}")
        for name, value in (("smoothing", smoothing), ("decay", decay)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not prior > 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        self.probe_cost, self.max_wait, self.smoothing, self.decay, self.prior = probe_cost, max_wait, smoothing, decay, prior
        self._wait = [0] * batch                # plain rounds left before the next probe
        # Running Ā as (weighted sum, sum of weights) of the run's surrogates; None: the next draft is a probe.
        self._surrogate: list[tuple[float, float] | None] = [None] * batch
        self._realised = [0.0] * batch          # decayed sums of realised and of expected accepted
        self._expected = [0.0] * batch          # lengths: r = (realised + prior) / (expected + prior)
        self._outcomes = [0.0] * batch          # the decayed count of the rounds in those sums
        # ({slot: running Ā}, T_plain / T_round as judged, requests it was judged for) of each group
        # of requests that stopped drafting in the last round, until their outcomes come.
        self._stopped: list[tuple[dict[int, tuple[float, float]], float, int]] = []
        self._round = 0                         # plans so far (the probe grid's clock)
        self._awaiting: list[float | None] = [None] * batch  # last tree's expected A, until its outcome comes
        self._draft = [True] * batch            # this round's decision
        self._alive = (True,) * batch           # the slots holding a request at the last plan
        self._remaining: list[int] | None = None  # rounds each request has left at most (the last plan's)
        self._ends_plain = [False] * batch      # stopped too near its limit for another probe
        self._paid = [False] * batch            # whether a round of its trees has paid (realised)
        self._trees = [0] * batch               # trees the request has drafted

    def plan(self, live: tuple[bool, ...] | None = None, plain: bool = False,
             remaining: list[int] | None = None) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """This round's (draft, probe) per request slot: draft unless waiting or the slot holds
        no request (``live``, B bools; None: every slot does); a probe is a draft with no
        running estimate (the first round, or the first after plain steps). ``plain``: no slot
        drafts this round (the caller measures a plain step); the waits run on. ``remaining``:
        B host ints, the tokens each request may still emit (its limit less its tokens; None:
        no limit), which bound its rounds: a request stopped near its end takes no more probes."""
        live = (True,) * len(self._wait) if live is None else live
        if len(live) != len(self._wait):
            raise ValueError(f"live must hold {len(self._wait)} values, got {len(live)}")
        if remaining is not None and len(remaining) != len(self._wait):
            raise ValueError(f"remaining must hold {len(self._wait)} values, got {len(remaining)}")
        self._remaining = None if remaining is None else list(remaining)
        draft = tuple(wait == 0 and alive and not plain and not ends
                      for wait, alive, ends in zip(self._wait, live, self._ends_plain))
        self._round += 1
        probe = tuple(d and surrogate is None for d, surrogate in zip(draft, self._surrogate))
        self._wait = [max(wait - 1, 0) for wait in self._wait]
        self._draft, self._alive = list(draft), live
        return draft, probe

    @property
    def slots(self) -> int:
        """Request slots."""
        return len(self._wait)

    @property
    def _live(self) -> int:
        """Requests in flight at the last plan (at least 1)."""
        return max(sum(self._alive), 1)

    @property
    def drafting(self) -> bool:
        """Whether any request drafts this round."""
        return any(self._draft)

    def judge(self, expected_accept: list[float], accepted: list[int], round_seconds: float, plain_seconds: float,
              each: bool = True) -> list[float | None]:
        """Take the outcome of each request's previous round and weigh this round's trees;
        decides the next rounds. Call every round, plain ones too (their outcomes count).

        Parameters
        ----------
        expected_accept : B floats
            Surrogate A of each request's tree this round (any value for the requests that
            did not draft).
        accepted : B ints
            Realised accepted draft tokens of each request's previous round.
        round_seconds : float
            Estimated seconds of this round (draft, build, verify, bookkeeping); in a round
            where nobody drafts, of a round like the last one with trees (its node count),
            estimated now: the stops and runs judged again in it weigh it against the plain
            step measured since, and an estimate from before that (a fresh process's first
            round, by the uncorrected model) against a measured plain step stopped trees
            that paid.
        plain_seconds : float
            Estimated seconds of a plain step of the same batch.
        each : bool
            Whether, in a round that pays, a request whose own tree does not pay steps aside
            alone. False where its tree's size is not its own choice (one budget allocated
            across the batch: a request given one node is no evidence against its drafter).

        Returns
        -------
        speedup : B floats or None
            S_b (module docstring) for the requests that drafted; None for the others.
        """
        batch = len(self._draft)
        if len(expected_accept) != batch or len(accepted) != batch:
            raise ValueError(f"expected_accept and accepted must hold {batch} values each, got {len(expected_accept)} and {len(accepted)}")
        ratio = plain_seconds / round_seconds
        outcomes = [b for b, awaiting in enumerate(self._awaiting) if awaiting is not None]
        if outcomes and (self._live + sum(accepted[b] for b in outcomes)) / self._live * ratio >= 1.0:
            for b in outcomes:  # the round those trees made paid for the batch: they may resume late
                self._paid[b] = True
        # The outcomes age every round, plain ones too: while a request waits, what stopped it
        # fades and its probes are judged more by their own trees (a drafter that turns good
        # after a run of misses resumes; outcomes that aged only with new outcomes kept such a
        # request in plain steps for good).
        for b in range(batch):
            awaiting, self._awaiting[b] = self._awaiting[b], None
            self._realised[b] = self.decay * self._realised[b] + (accepted[b] if awaiting is not None else 0)
            self._expected[b] = self.decay * self._expected[b] + (awaiting or 0.0)
            self._outcomes[b] = self.decay * self._outcomes[b] + (awaiting is not None)
        drafting = [b for b, drafted in enumerate(self._draft) if drafted]
        self._review(None if drafting else ratio)
        if not drafting:
            self._recheck(ratio)
            return [None] * batch
        surrogates = {}
        for b in drafting:
            self._awaiting[b] = expected_accept[b]
            self._trees[b] += 1
            # A mean with fading weights, not a running value started at the probe's: a probe's
            # surrogate (the first of a request, before any calibration) can be far off, and it
            # should count as one round, not as all the rounds before it.
            total, weight = self._surrogate[b] or (0.0, 0.0)
            surrogates[b] = (self.smoothing * total + expected_accept[b], self.smoothing * weight + 1.0)
        speedup = self._speedup(surrogates, ratio, self._live)
        if speedup < 1.0:  # the round does not pay: every request of it steps aside, together
            self._stop(surrogates, speedup, ratio, self._live)
            return [speedup if b in surrogates else None for b in range(batch)]
        # It pays: a request whose own tree does not (S_b = (1 + Ā_b r_b) ratio < 1) steps
        # aside alone while the others keep drafting.
        out: list[float | None] = [None] * batch
        for b, surrogate in surrogates.items():
            out[b] = self._speedup({b: surrogate}, ratio, 1) if each else speedup
            if out[b] >= 1.0:
                self._surrogate[b] = surrogate
            else:
                self._stop({b: surrogate}, out[b], ratio, 1)
        return out

    def _stop(self, surrogates: dict[int, tuple[float, float]], speedup: float, ratio: float, live: int,
              review: bool = True) -> None:
        """The requests ``surrogates`` of a round estimated at ``speedup`` < 1 (``ratio`` =
        T_plain / T_round) step aside for the wait ``_wait_for`` gives; their round is judged
        again when its outcomes arrive (``_review``; ``review`` False: they are in already), as
        a round of ``live`` requests."""
        wait = self._wait_for(surrogates, speedup, ratio, live)
        for b, ends in zip(surrogates, self._past_limit(surrogates, wait)):
            self._surrogate[b], self._wait[b], self._ends_plain[b] = None, wait, ends
        if review:
            self._stopped.append((surrogates, ratio, live))

    def _wait_for(self, surrogates: dict[int, tuple[float, float]], speedup: float, ratio: float, live: int,
                  elapsed: int = 0) -> int:
        """``_wait_after`` less the ``elapsed`` rounds since the stop, and with several requests
        in flight, ending on a multiple of ``PROBE_GRID`` rounds for a request stopped alone:
        the requests that stopped at different times probe in the same rounds, and a probe
        costs the batch one tree round, not one per request."""
        wait = max(self._wait_after(surrogates, speedup, ratio, live) - elapsed, 0)
        if live == 1 and self._live > 1:
            wait = -(-(self._round + wait) // PROBE_GRID) * PROBE_GRID - self._round
        return wait

    def _past_limit(self, surrogates: dict[int, tuple[float, float]], wait: int) -> list[bool]:
        """Per request of ``surrogates``: whether fewer than ``wait`` rounds would follow the probe
        that ends its wait (module docstring), for a request none of whose rounds has paid: it
        then ends in plain steps. Its wait still counts down, as the batch's schedule for the
        requests that join it (``reset``)."""
        if self._remaining is None:
            return [False] * len(surrogates)
        return [not self._paid[b] and self._remaining[b] - wait < wait for b in surrogates]

    def _gain(self, b: int, surrogate: tuple[float, float]) -> float:
        """Request b's expected accepted draft tokens per round, g_b: its realised mean, with
        its running surrogate Ā_b (weighted sum, weight) times r_b standing in for ``prior``
        more rounds."""
        total, weight = surrogate
        return self._realised_mean(b, total / weight * (self._realised[b] + self.prior) / (self._expected[b] + self.prior))

    def _realised_mean(self, b: int, estimate: float) -> float:
        """Request b's realised mean accepted length, ``estimate`` standing in for ``prior``
        more rounds."""
        return (self._realised[b] + self.prior * estimate) / (self._outcomes[b] + self.prior)

    def _speedup(self, surrogates: dict[int, tuple[float, float]], ratio: float, live: int) -> float:
        """S of a round in which the requests ``surrogates`` (slot -> running surrogate) draft:
        the tokens of ``live`` requests, (live + the sum of their gains), over the ``live`` of
        a plain step, times ``ratio`` = T_plain / T_round. One request: (1 + g) * ratio."""
        return (live + sum(self._gain(b, s) for b, s in surrogates.items())) / live * ratio

    def _review(self, ratio: float | None) -> None:
        """Judge the rounds that stopped drafting again, now that their outcomes are in r (and,
        in a plain round, the times in ``ratio``, T_plain / T_round estimated now; None: the
        ratio they were judged at): a probe, or the last round of a run, that accepted what
        pays resumes drafting next round, after one plain step instead of the whole wait; one
        that did not waits as long as this evidence says, from now."""
        stopped, self._stopped = self._stopped, []
        for surrogates, judged_ratio, live in stopped:
            ratio = judged_ratio if ratio is None else ratio
            speedup = self._speedup(surrogates, ratio, live)
            if speedup >= 1.0:
                for b, surrogate in surrogates.items():
                    self._wait[b], self._surrogate[b], self._ends_plain[b] = 0, surrogate, False
                continue
            wait = self._wait_for(surrogates, speedup, ratio, live, elapsed=1)  # from the stop, a round ago
            for b, ends in zip(surrogates, self._past_limit(surrogates, wait)):
                self._wait[b], self._ends_plain[b] = wait, ends

    def _recheck(self, ratio: float) -> None:
        """A plain round of requests that were drafting (the engine's one measured plain step,
        after the first round): their last trees' outcomes are in r now, so their run is
        judged again before they draft on (a round like their last, at ``ratio`` = T_plain /
        T_round estimated now), instead of one tree round later, in the round after."""
        running = {b: surrogate for b, (surrogate, alive) in enumerate(zip(self._surrogate, self._alive))
                   if surrogate is not None and alive}
        if not running:
            return
        speedup = self._speedup(running, ratio, self._live)
        if speedup < 1.0:
            self._stop(running, speedup, ratio, self._live, review=False)

    def _wait_after(self, surrogates: dict[int, tuple[float, float]], speedup: float, ratio: float, live: int) -> int:
        """Plain rounds before the next probe of the requests ``surrogates`` (slot -> running
        surrogate), after a round estimated at ``speedup`` < 1 (``ratio`` = T_plain / T_round):
        a probe like it loses (1 - S) / ratio plain steps (its time, less the plain steps its
        tokens would have taken), so waiting that over probe_cost rounds keeps the probes of a
        drafter that never pays under ``probe_cost`` of the time, while one estimated near 1,
        whose probes cost next to nothing and which may well pay (the estimate is noisy), is
        tried again soon: waits that doubled after every probe that did not pay kept such a
        drafter in plain steps for most of a request. S is the lower of the estimate and what
        the requests' recent trees realised: a drafter that is confident and wrong keeps its
        estimate near 1 (r has a prior and a memory), but not what its rounds cost. One wait
        for all of them: they probe together, and the rounds between are plain for the batch."""
        # Leaning further toward what was realised: each request's realised mean, with the
        # round's mean gain per request standing in for ``prior`` rounds (one miss at the start
        # of a request is no evidence yet).
        drafting = list(surrogates)
        estimate = (speedup / ratio - 1.0) * live / len(drafting)
        realised = sum(self._realised_mean(b, estimate) for b in drafting)
        speedup = min(speedup, (live + realised) / live * ratio)
        # The loss has two parts. What the trees expect (r = 1) is known without outcomes: a
        # drafter whose trees expect next to nothing loses (1 - S_1) / ratio a probe, surely;
        # S_1 from the mean surrogate of the request's trees so far (its outcomes' and this
        # run's), not from a probe's one tree: an oracle's probe tree is a flat one two times
        # in three, and a full wait after each held a drafter that paid 1.11x for 20 rounds.
        # What r < 1 adds is evidence of the outcomes, worth trusting as far as they could have
        # told a drafter that pays its way (one whose trees accept what they expect) from one
        # that does not: trees that expected E tokens in all miss them all with chance
        # exp(-E / prior) when they accept what they expect (E = 0.3: 3 times in 4), so that
        # part counts 1 - exp(-E / prior), E the expected tokens of the requests' outcomes so far.
        expected = sum((total + self._expected[b]) / (weight + self._outcomes[b]) for b, (total, weight) in surrogates.items())
        sure = min((live + expected) / live * ratio, 1.0)
        evidence = sum(self._expected[b] for b in drafting)
        loss = (1.0 - sure) - max(sure - speedup, 0.0) * math.expm1(-evidence / self.prior)
        wait = min(self.max_wait, max(1, math.ceil(loss / (ratio * self.probe_cost))))
        if evidence < self.prior and all(self._trees[b] <= 1 for b in drafting):  # one unsure tree (module docstring)
            return min(wait, PROBE_GRID)
        return wait

    def _batch_wait(self) -> int:
        """Rounds until the batch's next probe: the shortest wait among the requests of the last
        plan while none of them drafts on (0 if one does, or none waits)."""
        alive = [b for b, alive in enumerate(self._alive) if alive]
        if any(self._surrogate[b] is not None for b in alive):
            return 0
        return min((self._wait[b] for b in alive if self._wait[b] > 0), default=0)

    def reset(self, slots: list[int]) -> None:
        """New requests take the slots ``slots`` (host ints): their state starts afresh, and their
        first draft is a probe. With several slots, that probe waits for the batch's next one
        while every request of the last plan (those leaving included) waits: a probe costs the
        batch one tree round whoever drafts in it, the evidence that stopped the batch is about
        the drafter on this batch and machine, which the newcomers share, and a batch whose
        requests all leave and join together (equal lengths) would otherwise probe at every
        admission."""
        wait = self._batch_wait() if self.slots > 1 else 0
        fresh = SpeedupFloor(1, self.probe_cost, self.max_wait, self.smoothing, self.decay, self.prior)
        for name in ("_wait", "_surrogate", "_realised", "_expected", "_outcomes", "_awaiting", "_draft", "_ends_plain", "_paid", "_trees"):
            values = getattr(self, name)
            for slot in slots:
                values[slot] = getattr(fresh, name)[0]
        for slot in slots:
            self._wait[slot] = wait
        for surrogates, _, _ in self._stopped:
            for slot in slots:
                surrogates.pop(slot, None)
        # A group whose requests all left has nothing to judge again (and no mean to take).
        self._stopped = [group for group in self._stopped if group[0]]
