"""The latency of one whole round, T(n, c) = T_draft + T_aux(n) + T_verify(n, c), corrected
online, as the table ``build_tree`` and the batch allocator take; and of one plain step (no
draft, no tree), which the speedup floor weighs every round against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._checks import as_float64, as_value
from .online import OnlineCorrection
from .roofline import RooflineModel


def _to_device(table: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Ship a host table to ``device`` without waiting on the device's queue: a copy from
    pageable memory would first synchronise the stream, one from pinned memory does not."""
    device = torch.device(device)
    if device.type == "cpu":
        return table
    return table.pin_memory().to(device, non_blocking=True)


@dataclass
class LatencyModel:
    """Round latency of a draft-tree decoder (seconds).

    roofline: the (calibrated) target forward model; verify of n nodes is a forward of n + 1
    tokens (the root and the nodes). draft_seconds: the drafter's forward, independent of n.
    aux_seconds + aux_per_node_seconds * n: tree build, masks, acceptance walk, bookkeeping.
    correction: the online measured/predicted factors, keyed by the round's total node count.
    plain_correction: the same for plain steps (a forward of one token per request and the
    round's bookkeeping, no draft), from measured plain steps.
    """

    roofline: RooflineModel
    draft_seconds: float = 0.0
    aux_seconds: float = 0.0
    aux_per_node_seconds: float = 0.0
    correction: OnlineCorrection = field(default_factory=OnlineCorrection)
    plain_correction: OnlineCorrection = field(default_factory=OnlineCorrection)

    def __post_init__(self):
        for name in ("draft_seconds", "aux_seconds", "aux_per_node_seconds"):
            as_float64(getattr(self, name), name)

    def round_seconds(self, n_nodes, context_len, batch: int = 1) -> float | torch.Tensor:
        """Modelled seconds of a round without the online correction.

        n_nodes: tree nodes summed over the batch (>= 1); context_len: cached tokens per
        request (the batch mean), broadcastable. Returns float64 of the broadcast shape, or a
        float when both are numbers.
        """
        n = as_value(n_nodes, "n_nodes", minimum=1.0)
        verify = self.roofline.forward_seconds(n + batch, context_len, batch)
        return self.draft_seconds + self.aux_seconds + self.aux_per_node_seconds * n + verify

    def round_estimate(self, n_nodes: float, context_len: float, batch: int = 1) -> float:
        """Seconds of a round with ``n_nodes`` (>= 1; a mean may be fractional) tree nodes over the
        batch, corrected online."""
        return float(self.round_seconds(n_nodes, context_len, batch)) * self.correction.factor(round(n_nodes))

    def plain_modelled(self, context_len: float, batch: int = 1) -> float:
        """Modelled seconds of a plain step of ``batch`` requests at mean context ``context_len``,
        without the online correction: the round's fixed bookkeeping and a forward of one token
        per request (the roofline's float path: the floor asks for it every round)."""
        return float(self.aux_seconds + self.roofline.forward_seconds(batch, float(context_len), batch))

    def plain_estimate(self, context_len: float, batch: int = 1) -> float:
        """Seconds of a plain step of ``batch`` requests at mean context ``context_len``, corrected
        online from measured plain steps. Before the first one, the factor of the smallest
        measured rounds stands in: a model that is off by a constant (a slower machine than
        calibrated) is then off equally for both sides of the floor's comparison."""
        correction = self.plain_correction if self.plain_correction.log_factors() else self.correction
        return self.plain_modelled(context_len, batch) * correction.factor(1)

    def latency_table(self, context_lens, n_max: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """T(n) for n = 1..n_max, corrected online: the ``latency_table`` of build_tree.

        Parameters
        ----------
        context_lens : int, sequence of B ints, or (B,) CPU int tensor
            Root positions. An int gives one shared row. Host values: the engine knows them
            there, so building the table never syncs with the device.
        n_max : int
            Columns (the build's ``max_nodes``).
        device : torch.device
            Where the table goes (copied without blocking).

        Returns
        -------
        table : (1 or B, n_max) float32
            Seconds of a round with n nodes at column n - 1.
        """
        if not isinstance(n_max, int) or n_max < 1:
            raise ValueError(f"n_max must be an int >= 1, got {n_max!r}")
        c = as_float64(context_lens, "context_lens").reshape(-1, 1)
        n = torch.arange(1, n_max + 1, dtype=torch.float64)[None, :]
        table = self.round_seconds(n, c) * self.correction.factors(n_max)[None, :]
        return _to_device(table.to(torch.float32), device)

    def batch_latency_table(self, context_lens, m_max: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """T_batch(M) for M = 1..m_max tree nodes in total over a batch.

        Parameters
        ----------
        context_lens : sequence of B ints or (B,) CPU int tensor
            Root positions; the batch verify is modelled as one forward of M + B tokens, each
            request attending to its own cache (of the mean length).
        m_max : int
            Columns (B * max_nodes for the batch allocator).

        Returns
        -------
        table : (m_max,) float32
            Seconds of a round with M nodes in total at column M - 1.
        """
        if not isinstance(m_max, int) or m_max < 1:
            raise ValueError(f"m_max must be an int >= 1, got {m_max!r}")
        c = as_float64(context_lens, "context_lens").reshape(-1)
        m = torch.arange(1, m_max + 1, dtype=torch.float64)
        table = self.round_seconds(m, c.mean(), batch=c.numel()) * self.correction.factors(m_max)
        return _to_device(table.to(torch.float32), device)

    def observe(self, n_nodes: int, context_len: float, measured_seconds: float, batch: int = 1) -> None:
        """Feed one round's measured time (total nodes, mean context) to the online correction."""
        predicted = float(self.round_seconds(n_nodes, context_len, batch))
        self.correction.observe(int(n_nodes), float(measured_seconds), predicted)

    def observe_plain(self, context_len: float, measured_seconds: float, batch: int = 1) -> None:
        """Feed one plain step's measured time (mean context, batch) to its online correction."""
        predicted = self.plain_modelled(context_len, batch)
        self.plain_correction.observe(1, float(measured_seconds), predicted)
