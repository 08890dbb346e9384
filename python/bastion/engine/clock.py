"""Phase timings of a generation without a host sync on the way: CUDA events on the current
stream (perf_counter on the CPU, where the work is synchronous already), read once at the end."""

from __future__ import annotations

import time

import torch

ROUND_PHASES = ("draft", "build", "verify", "commit")  # each round's marks after "round", in order


class PhaseClock:
    """Named marks: "start" and "prefill" once, then per round "round" and ``ROUND_PHASES``."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self._once: dict[str, object] = {}
        self._rounds: list[dict[str, object]] = []

    @property
    def current_round(self) -> int:
        """Index of the round marked last."""
        return len(self._rounds) - 1

    def mark(self, name: str) -> None:
        if self.cuda:
            stamp = torch.cuda.Event(enable_timing=True)
            stamp.record()
        else:
            stamp = time.perf_counter()
        if name == "round":
            self._rounds.append({})
        (self._rounds[-1] if name in ("round", *ROUND_PHASES) else self._once)[name] = stamp

    def finish(self) -> "PhaseTimes":
        """Mark the end, wait for the device once, and return the measured phases."""
        self.mark("end")
        if self.cuda:
            torch.cuda.synchronize()
        return PhaseTimes(self)

    def seconds(self, begin, end) -> float:
        return begin.elapsed_time(end) / 1e3 if self.cuda else end - begin


class PhaseTimes:
    """What a finished :class:`PhaseClock` measured, in seconds."""

    def __init__(self, clock: PhaseClock):
        once = clock._once
        self.prefill_s = clock.seconds(once["start"], once["prefill"])
        self.total_s = clock.seconds(once["start"], once["end"])
        self._clock = clock

    def round_phases(self, index: int) -> dict[str, float]:
        """t_draft, t_build, t_verify, t_commit of round ``index`` (one that ran to its commit)."""
        marks = self._clock._rounds[index]
        names = ("round", *ROUND_PHASES)
        return {f"t_{name}": self._clock.seconds(marks[before], marks[name]) for before, name in zip(names, names[1:])}
