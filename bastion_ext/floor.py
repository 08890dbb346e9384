"""The speedup floor: per request, draft only while a tree is estimated to beat a plain step.

A round with a tree costs the drafter forward, the build and a verify of the root and the
nodes; a plain step costs a forward of the root alone. When the best tree's estimated
tokens per round do not pay for that difference, the request steps aside (verifies only its
root) for a while and then probes again: one drafted round, whose estimate decides whether it
keeps drafting. The waits double after every drafted round that does not pay and reset to
``first_wait`` when one pays, so a drafter that never pays costs a handful of probes per
hundred tokens.

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
        Weight of the past in the running estimate of tokens per drafted round (its
        per-round surrogate is noisy: one hard token should not stop a good drafter). A probe
        starts the estimate afresh.
    """

    def __init__(self, batch: int, first_wait: int = 4, max_wait: int = 64, smoothing: float = 0.5):
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if not isinstance(first_wait, int) or not 1 <= first_wait <= max_wait:
            raise ValueError(f"first_wait must be an int in 1..max_wait={max_wait}, got {first_wait!r}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.first_wait, self.max_wait, self.smoothing = first_wait, max_wait, smoothing
        self._wait = [0] * batch                # plain rounds left before the next probe
        self._backoff = [first_wait] * batch    # the wait after the next round that does not pay
        self._tokens: list[float | None] = [None] * batch  # running 1 + A; None: the next draft is a probe
        self._draft = [True] * batch            # this round's decision

    def plan(self) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """This round's (draft, probe) per request: draft unless waiting; a probe is a draft
        with no running estimate (the first round, or the first after plain steps)."""
        draft = tuple(wait == 0 for wait in self._wait)
        probe = tuple(d and tokens is None for d, tokens in zip(draft, self._tokens))
        self._wait = [max(wait - 1, 0) for wait in self._wait]
        self._draft = list(draft)
        return draft, probe

    def judge(self, expected_accept: list[float], round_seconds: float, plain_seconds: float) -> list[float | None]:
        """Weigh this round's trees; decides the next rounds.

        Parameters
        ----------
        expected_accept : B floats
            Calibrated surrogate A of each request's tree this round (any value for the
            requests that did not draft).
        round_seconds : float
            Estimated seconds of this round (draft, build, verify, bookkeeping).
        plain_seconds : float
            Estimated seconds of a plain step of the same batch.

        Returns
        -------
        speedup : B floats or None
            (1 + A) * plain_seconds / round_seconds with A the running estimate, for the
            requests that drafted; None for the others.
        """
        if len(expected_accept) != len(self._draft):
            raise ValueError(f"expected_accept must hold {len(self._draft)} values, got {len(expected_accept)}")
        out: list[float | None] = []
        for b, drafted in enumerate(self._draft):
            if not drafted:
                out.append(None)
                continue
            tokens = 1.0 + expected_accept[b]
            if self._tokens[b] is not None:
                tokens = self.smoothing * self._tokens[b] + (1.0 - self.smoothing) * tokens
            speedup = tokens * plain_seconds / round_seconds
            if speedup >= 1.0:
                self._tokens[b], self._backoff[b] = tokens, self.first_wait
            else:
                self._tokens[b], self._wait[b] = None, self._backoff[b]
                self._backoff[b] = min(2 * self._backoff[b], self.max_wait)
            out.append(speedup)
        return out

    def keep(self, rows: list[int]) -> None:
        """Keep the request slots ``rows`` (host ints, in the new order)."""
        for name in ("_wait", "_backoff", "_tokens", "_draft"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in rows])
