"""A drafter that knows each request's continuation: for the engine's tests and the speedup
floor's bench, where a drafter of known, tunable quality is wanted and no model is.

It drafts from the true continuation (the target's own greedy tokens, given up front) and
answers it noisily: at each draft position the true next token is the top candidate with
probability ``hit``, the second one (behind a wrong token) with probability ``second``, else
it is absent and the position is noise. Trees then accept deep paths through first children
and through siblings, and miss; ``hit`` sets how much they accept. It keeps the drafter
protocol of ``bastion.engine.generate_batch`` and checks that the engine keeps it too: every
request's context is extended in order, without gaps, before each draft.
"""

from __future__ import annotations

import torch


class OracleState:
    """The oracle's context per request slot: the positions it was extended with."""

    def __init__(self, rows):
        self.rows = list(rows)  # which sequence each slot drafts
        self.positions = {row: [] for row in self.rows}
        self.bound = 0

    def set_bound(self, longest: int) -> None:
        # Only a bound for the attention's reach: what the oracle checks is in ``draft``.
        self.bound = longest


class OracleDrafter:
    """Drafts ``sequences`` (one per request slot: prompt + continuation; an empty one drafts
    noise only) over ``vocab`` tokens, ``block_size - 1`` positions a draft.

    hit, second: the chances that the true token is the top candidate, or the second behind a
    wrong one (hit + second <= 1). seed: the noise's generator.
    """

    target_layer_ids = (0,)

    def __init__(self, sequences, vocab: int, block_size: int = 8, hit: float = 0.6, second: float = 0.25, seed: int = 0):
        if not (0.0 <= hit and 0.0 <= second and hit + second <= 1.0):
            raise ValueError(f"hit and second must be >= 0 with hit + second <= 1, got {hit} and {second}")
        if block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {block_size}")
        self.sequences = [list(s) for s in sequences]
        self.vocab = vocab
        self.block_size = block_size
        self.hit, self.second = hit, second
        self.generator = torch.Generator().manual_seed(seed)

    def new_state(self, batch: int, capacity: int) -> OracleState:
        if batch != len(self.sequences):
            raise ValueError(f"the oracle knows {len(self.sequences)} sequences, one per slot, but the batch has {batch} slots")
        return OracleState(range(batch))

    def extend(self, state: OracleState, target_hidden: torch.Tensor, positions: torch.Tensor, counts=None, rows=None) -> None:
        """Record the positions each slot was given (the first ``counts[b]`` of row b); ``rows``:
        the slots a new request starts in."""
        if target_hidden.shape[:2] != positions.shape:
            raise ValueError(f"features {tuple(target_hidden.shape)} do not match positions {tuple(positions.shape)}")
        for b, row in enumerate(state.rows if rows is None else rows.tolist()):
            if rows is not None:  # a new request starts in this slot
                state.positions[row] = []
            count = positions.shape[1] if counts is None else int(counts[b])
            state.positions[row].extend(positions[b, :count].tolist())

    def draft(self, state: OracleState, root_tokens: torch.Tensor, root_positions: torch.Tensor) -> torch.Tensor:
        """(slots, block_size - 1, vocab) fp32 logits of the positions after each root."""
        logits = torch.randn((len(state.rows), self.block_size - 1, self.vocab), generator=self.generator)
        for b, row in enumerate(state.rows):
            root = int(root_positions[b])
            if state.positions[row] != list(range(root)):
                raise RuntimeError(f"slot {row} drafts at position {root} from a context that is not positions 0..{root - 1}")
            sequence = self.sequences[row]
            for depth in range(1, self.block_size):
                if root + depth >= len(sequence):
                    break
                true = sequence[root + depth]
                u = float(torch.rand((), generator=self.generator))
                if u < self.hit:
                    logits[b, depth - 1, true] = 20.0
                elif u < self.hit + self.second:
                    logits[b, depth - 1, (true + 1) % self.vocab] = 20.0
                    logits[b, depth - 1, true] = 19.0
        return logits
