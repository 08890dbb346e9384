"""Turning target logits into tokens: argmax at temperature 0, otherwise the tempered
(optionally nucleus-truncated) distribution sampled from a seeded generator."""

from __future__ import annotations

import torch


class Sampler:
    """How the target's next tokens are chosen, shared by every strategy of one run.

    Parameters
    ----------
    temperature : 0 for greedy decoding, > 0 to sample from softmax(logits / temperature).
    top_p : nucleus mass in (0, 1]; 1 keeps the whole distribution.
    seed : seeds the generator the uniforms come from.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature = temperature
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: (..., V) float -> (..., V) fp32 probabilities the target samples from."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def uniforms(self, count: int) -> torch.Tensor:
        """(count,) fp32 uniforms in [0, 1) from the seeded generator (on the CPU)."""
        return torch.rand((count,), generator=self.generator)

    def pick(self, logits: torch.Tensor) -> int:
        """One token from logits (1, V): the argmax, or a sample by inverse CDF."""
        if self.greedy:
            return int(logits[0].argmax())
        probs = self.probs(logits[0])
        u = self.uniforms(1).to(probs.device)
        # The smallest v with cdf(v) > u, as in verify_sample; clamp guards fp32 round-off.
        v = int(torch.searchsorted(probs.cumsum(0), u, right=True)[0])
        return min(v, int(probs.nonzero().max()))
