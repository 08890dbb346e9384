"""The speedup floor: per request, draft only while a tree is estimated to beat a plain step.

A round with a tree costs the drafter forward, the build and a verify of the root and the
nodes; a plain step costs a forward of the root alone. When the best tree's estimated
tokens per round do not pay for that difference, the request steps aside (verifies only its
root) for a while and then probes again: one drafted round, whose estimate decides whether it
keeps drafting. The waits double after every drafted round that does not pay and reset to
``first_wait`` when one pays, so a drafter that never pays costs a handful of probes per
hundred tokens.

The estimate of request b, judged each round it drafts:

    S_b = (1 + Ā_b * r_b) * T_plain / T_round

Ā_b is the calibrated surrogate A of its trees, smoothed over its consecutive drafted rounds
(one hard token should not stop a good drafter; a probe starts afresh). r_b is a fast second
calibration from the realised accepted lengths, which arrive one round after each tree: the
policy's own calibrator moves slowly (it sizes every tree), and a drafter that is confident
and wrong must be caught within a round or two.

Host-side state only: every decision is made from numbers the host already holds (the
round's one read and the latency model), so the floor adds no device sync.
"""

from __future__ import annotations


class SpeedupFloor:
    """Which requests draft each round.

    Parameters
    ----------
    batch : int
        Request slots.
    first_wait : int
        Plain rounds after the first round that does not pay.
    max_wait : int
        The longest wait between probes (caps the cost of noticing that a drafter got good).
    smoothing : float
        Weight of the past in the running surrogate Ā.
    decay : float
        Weight of the past in the realised / expected sums of r.
    prior : float
        Tokens on each side of r before any realised round (r starts at 1).
    """

    def __init__(self, batch: int, first_wait: int = 4, max_wait: int = 64, smoothing: float = 0.5,
                 decay: float = 0.5, prior: float = 0.5):
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if not isinstance(first_wait, int) or not 1 <= first_wait <= max_wait:
            raise ValueError(f"first_wait must be an int in 1..max_wait={max_wait}, got {first_wait!r}")
        for name, value in (("smoothing", smoothing), ("decay", decay)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not prior > 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        self.first_wait, self.max_wait, self.smoothing, self.decay = first_wait, max_wait, smoothing, decay
        self._prior = prior
        self._wait = [0] * batch                # plain rounds left before the next probe
        self._backoff = [first_wait] * batch    # the wait after the next round that does not pay
        self._surrogate: list[float | None] = [None] * batch  # running Ā; None: the next draft is a probe
        self._realised = [prior] * batch        # decayed sums of realised and of expected accepted
        self._expected = [prior] * batch        # lengths: r = realised / expected
        self._awaiting: list[float | None] = [None] * batch  # last tree's expected A, until its outcome comes
        self._draft = [True] * batch            # this round's decision

    def plan(self, live: tuple[bool, ...] | None = None) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """This round's (draft, probe) per request slot: draft unless waiting or the slot holds
        no request (``live``, B bools; None: every slot does); a probe is a draft with no
        running estimate (the first round, or the first after plain steps)."""
        live = (True,) * len(self._wait) if live is None else live
        if len(live) != len(self._wait):
            raise ValueError(f"live must hold {len(self._wait)} values, got {len(live)}")
        draft = tuple(wait == 0 and alive for wait, alive in zip(self._wait, live))
        probe = tuple(d and surrogate is None for d, surrogate in zip(draft, self._surrogate))
        self._wait = [max(wait - 1, 0) for wait in self._wait]
        self._draft = list(draft)
        return draft, probe

    @property
    def slots(self) -> int:
        """Request slots."""
        return len(self._wait)

    @property
    def drafting(self) -> bool:
        """Whether any request drafts this round."""
        return any(self._draft)

    def judge(self, expected_accept: list[float], accepted: list[int], round_seconds: float, plain_seconds: float) -> list[float | None]:
        """Take the outcome of each request's previous round and weigh this round's trees;
        decides the next rounds. Call every round, plain ones too (their outcomes count).

        Parameters
        ----------
        expected_accept : B floats
            Calibrated surrogate A of each request's tree this round (any value for the
            requests that did not draft).
        accepted : B ints
            Realised accepted draft tokens of each request's previous round.
        round_seconds : float
            Estimated seconds of this round (draft, build, verify, bookkeeping).
        plain_seconds : float
            Estimated seconds of a plain step of the same batch.

        Returns
        -------
        speedup : B floats or None
            S_b (module docstring) for the requests that drafted; None for the others.
        """
        batch = len(self._draft)
        if len(expected_accept) != batch or len(accepted) != batch:
            raise ValueError(f"expected_accept and accepted must hold {batch} values each, got {len(expected_accept)} and {len(accepted)}")
        out: list[float | None] = []
        for b, drafted in enumerate(self._draft):
            if self._awaiting[b] is not None:
                self._realised[b] = self.decay * self._realised[b] + accepted[b]
                self._expected[b] = self.decay * self._expected[b] + self._awaiting[b]
                self._awaiting[b] = None
            if not drafted:
                out.append(None)
                continue
            self._awaiting[b] = expected_accept[b]
            surrogate = expected_accept[b]
            if self._surrogate[b] is not None:
                surrogate = self.smoothing * self._surrogate[b] + (1.0 - self.smoothing) * surrogate
            speedup = (1.0 + surrogate * self._realised[b] / self._expected[b]) * plain_seconds / round_seconds
            if speedup >= 1.0:
                self._surrogate[b], self._backoff[b] = surrogate, self.first_wait
            else:
                self._surrogate[b], self._wait[b] = None, self._backoff[b]
                self._backoff[b] = min(2 * self._backoff[b], self.max_wait)
            out.append(speedup)
        return out

    def reset(self, slots: list[int]) -> None:
        """New requests take the slots ``slots`` (host ints): their state starts afresh."""
        fresh = SpeedupFloor(1, self.first_wait, self.max_wait, self.smoothing, self.decay, self._prior)
        for name in ("_wait", "_backoff", "_surrogate", "_realised", "_expected", "_awaiting", "_draft"):
            values = getattr(self, name)
            for slot in slots:
                values[slot] = getattr(fresh, name)[0]
