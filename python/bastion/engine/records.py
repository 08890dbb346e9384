"""What a generation measured: the engine's one clock, each request's round records and the
results built from them.

The clock marks "start" and "prefill" once and, per round, "round" and ``ROUND_PHASES``. On
CUDA a mark is an event on the current stream, on the CPU a ``perf_counter`` reading (the
work is synchronous already). A run stepped alongside others (``bastion bench --interleave``)
pauses its clock between its steps: the time away is not its own. The policy's online latency
correction takes each round's seconds as soon as the device has run it (``finished``, never
blocking: typically one round late on CUDA); the records take every phase once, at the end.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

ROUND_PHASES = ("draft", "build", "verify", "commit")  # each round's marks after "round", in order


class RoundClock:
    """The engine's marks (see the module docstring) on ``device``."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self._once: dict[str, object] = {}
        self._rounds: list[dict[str, object]] = []
        self._unreported: deque = deque()  # (tag, round index) of ended rounds the policy has not had
        self._away: list[list[object]] = []  # [pause, resume] stamps of the spans that are not this run's

    @property
    def current_round(self) -> int:
        """Index of the round marked last."""
        return len(self._rounds) - 1

    def mark(self, name: str) -> None:
        stamp = self._stamp()
        if name == "round":
            self._rounds.append({})
        (self._rounds[-1] if name in ("round", *ROUND_PHASES) else self._once)[name] = stamp

    def pause(self) -> None:
        """From now until :meth:`resume`, other work than this run's runs: that span does not
        count in ``total_s``. No sync: on CUDA the stamps are events in stream order, so the span
        holds the device time of the work queued between them."""
        self._away.append([self._stamp()])

    @property
    def paused(self) -> bool:
        """Whether the clock is paused (:meth:`pause` without its :meth:`resume`)."""
        return bool(self._away) and len(self._away[-1]) == 1

    def resume(self) -> None:
        """This run goes on (after :meth:`pause`)."""
        self._away[-1].append(self._stamp())

    def _stamp(self):
        if not self.cuda:
            return time.perf_counter()
        stamp = torch.cuda.Event(enable_timing=True)
        stamp.record()
        return stamp

    def end_round(self, tag) -> None:
        """The current round is over (its "commit" is marked): ``tag`` comes back with its
        seconds from :meth:`finished`."""
        self._unreported.append((tag, self.current_round))

    def finished(self) -> list[tuple[object, float]]:
        """(tag, seconds from "round" to "commit") of every ended round the device has run and
        that was not returned before, oldest first; never waits for the device."""
        done = []
        while self._unreported:
            tag, index = self._unreported[0]
            marks = self._rounds[index]
            if self.cuda and not marks["commit"].query():
                break
            done.append((tag, self._seconds(marks["round"], marks["commit"])))
            self._unreported.popleft()
        return done

    def _seconds(self, begin, end) -> float:
        return begin.elapsed_time(end) / 1e3 if self.cuda else end - begin

    def finish(self) -> "PhaseTimes":
        """Mark the end, wait for the device once, and return the measured phases."""
        self.mark("end")
        if self.cuda:
            torch.cuda.synchronize()
        return PhaseTimes(self)


class PhaseTimes:
    """What a finished :class:`RoundClock` measured, in seconds."""

    def __init__(self, clock: RoundClock):
        once = clock._once
        self.prefill_s = clock._seconds(once["start"], once["prefill"])
        self.total_s = clock._seconds(once["start"], once["end"]) - sum(clock._seconds(*span) for span in clock._away)
        self._clock = clock

    def round_phases(self, index: int) -> dict[str, float]:
        """t_draft, t_build, t_verify, t_commit of round ``index`` (one that ran to its commit)."""
        marks = self._clock._rounds[index]
        names = ("round", *ROUND_PHASES)
        return {f"t_{name}": self._clock._seconds(marks[before], marks[name]) for before, name in zip(names, names[1:])}


@dataclass
class GenerationResult:
    """One request's new tokens, timings and one record per round (dicts, JSON-ready).
    ``total_s`` is the whole run's time (its requests decode together)."""

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


class RoundRecords:
    """Each request's round records, kept by a speculative run (``ar`` keeps none).

    A record opens at the round's host read (what the round chose), takes its outcome at the
    next read (what it accepted) and its phase times and target tokens at the end. positions:
    the drafter's P; record_topk: how many top draft candidates per position to keep.
    """

    def __init__(self, positions: int, record_topk: int = 0):
        self.positions, self.record_topk = positions, record_topk
        self._topk: list = []  # (records, device top-k), read once at the end

    def open(self, request, clock: RoundClock, **fields) -> None:
        request.rounds.append({"context_len": request.committed_len, **fields, "clock_round": clock.current_round})

    @staticmethod
    def outcome(request, accept_len: int, accepted: list[int], bonus: int) -> None:
        """The last round's outcome of ``request`` (read one round later)."""
        if request.rounds:
            request.rounds[-1].update(accept_len=accept_len, accepted_tokens=accepted, bonus=bonus)

    def keep_topk(self, requests: list, draft_logits: torch.Tensor) -> None:
        """The top candidates of ``draft_logits`` ((slots, P, V), rows of ``requests``, None
        for a free slot) for their latest records, on the device until the end."""
        if self.record_topk:
            rows = [(record.rounds[-1], i) for i, record in enumerate(requests) if record is not None]
            self._topk.append((rows, torch.log_softmax(draft_logits.float(), -1).topk(self.record_topk, -1)))

    def finish(self, requests: list, prompts: list[list[int]], times: PhaseTimes, to_target_ids) -> list[GenerationResult]:
        """One result per request (in order), its records completed: phase times, the realised
        speedup over a plain step, and the target's tokens at depths 1..P after each root (the
        offline policy replay, bench/replay_policies.py, scores any tree against them)."""
        for rows, (logq, cand) in self._topk:
            cand, logq = to_target_ids(cand).tolist(), logq.tolist()
            for record, slot in rows:
                record["topk_ids"], record["topk_logprobs"] = cand[slot], logq[slot]
        results = []
        for request, prompt in zip(requests, prompts):
            sequence = list(prompt) + request.emitted
            for index, record in enumerate(request.rounds):
                record.update(round=index, **times.round_phases(record.pop("clock_round")))
                if record["plain_s"] is not None:
                    record["realised_speedup"] = (1 + record["accept_len"]) * record["plain_s"] / _round_seconds(record)
                after = sequence[record["context_len"] + 1: record["context_len"] + 1 + self.positions]
                record["target_tokens"] = after + [-1] * (self.positions - len(after))
            results.append(GenerationResult(request.emitted, request.prompt_len, times.prefill_s, times.total_s, request.rounds))
        return results
