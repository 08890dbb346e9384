"""What a run generates and how (``GenerationConfig``), and the check of a prompt against
the model's context window."""

from __future__ import annotations

from dataclasses import dataclass

from .sampling import Sampler


@dataclass
class GenerationConfig:
    """What to generate and how.

    strategy: one of ``strategies.STRATEGIES``. budget: ddtree's fixed node count, or the
    cap of caddtree / bastion. topk: branching width K. record_topk: how many of each draft
    position's top candidates to keep in the round records (0: none, the cheapest).
    batch_allocation: ``bastion`` on a batch splits one node budget across the requests by
    marginal gain (True) or cuts each request's tree on its own (False). speedup_floor:
    ``caddtree`` and ``bastion`` take plain steps while no tree is estimated to pay (True), or
    draft every round (False).
    """

    strategy: str = "bastion"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    budget: int | None = None
    topk: int = 8
    record_topk: int = 0
    stop_on_eos: bool = True
    batch_allocation: bool = True
    speedup_floor: bool = True

    def sampler(self) -> Sampler:
        """How this run picks its tokens (temperature, top_p, and the seed keying the uniforms)."""
        return Sampler(self.temperature, self.top_p, self.seed)


def check_context(model, prompt_len: int, max_new_tokens: int, draft_positions: int) -> None:
    """ValueError if the prompt plus the generation (and one tree's depth) exceed the model's
    context window."""
    window = getattr(model.config, "max_position_embeddings", None)
    need = prompt_len + max_new_tokens + draft_positions
    if window is not None and need > window:
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} (+ {draft_positions} "
            f"draft positions) exceeds the model's context of {window} tokens")
