"""Why a speculative output differs from ``ar``: a near-tie or a bug.

A verify forward over many tokens and a one-token ``ar`` step compute the same logits in
different orders. In fp32 the greedy tokens agree; in bf16 the rounding can differ by more
than the gap between the target's top two logits, and then the two greedy outputs part at that
token although both are the target's argmax of what it computed. :func:`first_divergence`
measures both numbers at the first differing token. A gap within two units in the last place
of the model's dtype at the top logit's magnitude is a tie at that dtype's resolution whatever
the order of the computation (a plain forward can happen to round like the step while the
verify's tree-shaped forward does not), so that is the smallest gap ever called a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .target import TargetCache


@dataclass
class Divergence:
    """The first new token where two outputs differ.

    index: its position among the new tokens; ar_token / other_token: the two choices;
    ar_gap: ar's top-1 minus top-2 logit there (a one-token step, as ``ar`` decodes);
    step_vs_forward: the largest |logit| difference over the vocabulary between that step and
    one forward over the whole prefix (as a verify computes it); resolution: two units in the last
    place of the model's dtype at the top logit's magnitude; near_tie: ar_gap <= the larger of the two.
    """

    index: int
    ar_token: int
    other_token: int
    ar_gap: float
    step_vs_forward: float
    resolution: float

    @property
    def near_tie(self) -> bool:
        return self.ar_gap <= max(self.step_vs_forward, self.resolution)

    def describe(self, dtype: torch.dtype) -> str:
        verdict = ("a near-tie: rounding, not a bug" if self.near_tie
                   else "NOT a near-tie: the gap exceeds the rounding difference, a bug")
        return (f"first differs at new token {self.index} ({self.ar_token} vs {self.other_token}) in "
                f"{str(dtype).removeprefix('torch.')}: ar's top-two logit gap {self.ar_gap:.4g} vs step-vs-forward "
                f"logit difference {self.step_vs_forward:.4g} (dtype resolution {self.resolution:.4g}): {verdict}")


@torch.inference_mode()
def first_divergence(model, prompt_ids: list[int], ar_tokens: list[int], other_tokens: list[int]) -> Divergence | None:
    """The first differing new token of ``other_tokens`` against ``ar_tokens`` (None when
    one is a prefix of the other), with the two logit measures of :class:`Divergence`."""
    index = next((i for i, (a, b) in enumerate(zip(ar_tokens, other_tokens)) if a != b), None)
    if index is None:
        return None
    prefix = list(prompt_ids) + list(ar_tokens[:index])
    device = model.device
    stepped = TargetCache(model, batch=1, capacity=len(prefix))
    if len(prefix) > 1:
        stepped.prefill([prefix[:-1]])
    step_logits = stepped.step(torch.tensor([prefix[-1]], device=device))[0]
    forward_logits = model(input_ids=torch.tensor([prefix], device=device)).logits[0, -1].float()
    top2 = step_logits.topk(2).values
    resolution = 2 * torch.finfo(model.dtype).eps * float(top2[0].abs())
    return Divergence(index, ar_tokens[index], other_tokens[index], float(top2[0] - top2[1]),
                      float((step_logits - forward_logits).abs().max()), resolution)
