"""Why a speculative output differs from ``ar``: a near-tie or a bug.

A verify forward over many tokens and a one-token ``ar`` step compute the same logits in
different orders. In fp32 the greedy tokens agree; in bf16 the rounding can differ by more
than the gap between the target's top two logits, and then the two greedy outputs part at that
token although both are the target's argmax of what it computed. :func:`first_divergence`
measures both numbers at the first differing token. A gap within two units in the last place
of the model's dtype at the top logit's magnitude is a tie at that dtype's resolution whatever
the order of the computation (a plain forward can happen to round like the step while the
verify's tree-shaped forward does not), so that is the smallest gap ever called a bug.

At temperature > 0 the same holds of the sample: every strategy draws a token by inverse CDF
(in token-id order) with the same uniform, so the tokens agree unless the uniform lies closer
to an end of ar's token's CDF interval than the two computations' CDFs differ. In fp32 that
difference is about 1e-6, and at T = 0.8 each of SmolLM2's 49,152 tokens has an interval, so
a flip happens now and then (the suite met one: a uniform 6.6e-7 from the end of a 1.9e-6
wide interval, the CDFs 8.3e-7 apart). The measure then compares the uniform's distances to
both tokens' intervals with the CDF difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import Sampler
from .target import TargetCache


@dataclass
class Divergence:
    """The first new token where two outputs differ.

    index: its position among the new tokens; ar_token / other_token: the two choices;
    measure: "logit" (greedy) or "CDF" (sampled), what the next three compare;
    ar_gap: ar's margin there, from a one-token step as ``ar`` decodes: its top-1 minus top-2
    logit, or the uniform's distance to the nearer end of ar's token's CDF interval;
    other_gap: how far the other choice is from being picked by that step: ar's token's logit
    minus its logit, or the uniform's distance to its CDF interval (0 inside);
    step_vs_forward: the largest |logit| (or |CDF|) difference over the vocabulary between that
    step and one forward over the whole prefix (as a verify computes it); resolution: two units
    in the last place of the model's dtype at the top logit's magnitude (fp32's at 1 for the
    CDF); near_tie: both gaps <= the larger of the two (rounding can only flip ar's pick to a
    choice that rounding brings within reach).
    """

    index: int
    ar_token: int
    other_token: int
    ar_gap: float
    other_gap: float
    step_vs_forward: float
    resolution: float
    measure: str = "logit"

    @property
    def near_tie(self) -> bool:
        return max(self.ar_gap, self.other_gap) <= max(self.step_vs_forward, self.resolution)

    def describe(self, dtype: torch.dtype) -> str:
        verdict = ("a near-tie: rounding, not a bug" if self.near_tie
                   else "NOT a near-tie: the gap exceeds the rounding difference, a bug")
        return (f"first differs at new token {self.index} ({self.ar_token} vs {self.other_token}) in "
                f"{str(dtype).removeprefix('torch.')}: ar's {self.margin_name} {self.ar_gap:.4g}, the other's "
                f"{self.other_gap:.4g}, vs step-vs-forward "
                f"{self.measure} difference {self.step_vs_forward:.4g} (dtype resolution {self.resolution:.4g}): {verdict}")

    @property
    def margin_name(self) -> str:
        return "top-two logit gap" if self.measure == "logit" else "uniform's distance to its token's CDF interval end"


@torch.inference_mode()
def first_divergence(model, prompt_ids: list[int], ar_tokens: list[int], other_tokens: list[int],
                     sampler: Sampler | None = None, request: int = 0) -> Divergence | None:
    """The first differing new token of ``other_tokens`` against ``ar_tokens`` (None when
    one is a prefix of the other), with the two measures of :class:`Divergence`: of the
    logits, or with a sampling ``sampler`` (the run's) of the CDFs and the uniform that
    request index ``request`` of the run drew for that token."""
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
    if sampler is not None and not sampler.greedy:
        return _sampled_divergence(index, ar_tokens[index], other_tokens[index], step_logits, forward_logits,
                                   sampler, request, len(prefix))
    top2 = step_logits.topk(2).values
    resolution = 2 * torch.finfo(model.dtype).eps * float(top2[0].abs())
    ar_token, other_token = ar_tokens[index], other_tokens[index]
    return Divergence(index, ar_token, other_token, float(top2[0] - top2[1]),
                      float(step_logits[ar_token] - step_logits[other_token]),
                      float((step_logits - forward_logits).abs().max()), resolution)


def _sampled_divergence(index: int, ar_token: int, other_token: int, step_logits: torch.Tensor,
                        forward_logits: torch.Tensor, sampler: Sampler, request: int, position: int) -> Divergence:
    """The CDF measures at a sampled token. step_logits, forward_logits: (V,) fp32; position:
    the token's absolute position (its uniform's key with request)."""
    step_cdf = sampler.probs(step_logits).cumsum(-1)
    forward_cdf = sampler.probs(forward_logits).cumsum(-1)
    u = float(sampler.uniforms(torch.tensor([request]), torch.tensor([[position]]))[0, 0])

    def interval(token: int) -> tuple[float, float]:
        return (float(step_cdf[token - 1]) if token > 0 else 0.0), float(step_cdf[token])

    low, high = interval(ar_token)
    other_low, other_high = interval(other_token)
    return Divergence(index, ar_token, other_token, min(u - low, high - u), max(other_low - u, u - other_high, 0.0),
                      float((step_cdf - forward_cdf).abs().max()), 2 * torch.finfo(torch.float32).eps, measure="CDF")
