"""The drafter's context from plain steps, held on the device until a round drafts.

A plain step commits one token per request, and the drafter must see it before it drafts
again (a probe drafts from the full context). Extending the drafter by one token per step
costs its projections' weights read once per token; holding the steps' features and
extending once, when a round next drafts (or a request joins, or the hold is full), reads
them once per run of plain steps. The drafter sees the same tokens at the same positions.
"""

from __future__ import annotations

import torch


class HeldContext:
    """Up to ``steps`` plain steps' features for ``slots`` request slots.

    The buffers ((slots, steps, F) features, (slots, steps) positions) are allocated at the
    first hold, once. ``counts`` ((slots,) int64) counts each slot's live steps: a request
    that finishes during a hold stops counting, so its steps are a prefix of the held ones.
    No request joins during a hold (``flush`` comes first).
    """

    def __init__(self, slots: int, steps: int, device):
        self.steps = steps
        self.held = 0  # steps held (host)
        self.counts = torch.zeros((slots,), dtype=torch.int64, device=device)
        self._features: torch.Tensor | None = None
        self._positions = torch.zeros((slots, steps), dtype=torch.int64, device=device)

    def hold(self, features: torch.Tensor, positions: torch.Tensor, live: torch.Tensor) -> None:
        """One plain step: features (slots, 1, F) of its tokens at positions (slots,) int64;
        live (slots,) int64, the slots whose token counts."""
        if self._features is None:
            self._features = features.new_zeros((features.shape[0], self.steps, features.shape[2]))
        self._features[:, self.held] = features[:, 0]
        self._positions[:, self.held] = positions
        self.counts += live
        self.held += 1

    @property
    def full(self) -> bool:
        return self.held == self.steps

    def flush(self, drafter, state) -> None:
        """Extend the drafter's ``state`` with every held step; nothing is held afterwards."""
        if self.held == 0:
            return
        drafter.extend(state, self._features[:, : self.held], self._positions[:, : self.held], counts=self.counts)
        self.held = 0
        self.counts.zero_()
