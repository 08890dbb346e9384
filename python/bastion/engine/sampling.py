"""Turning target logits into tokens: argmax at temperature 0, otherwise the tempered
(optionally nucleus-truncated) distribution sampled by inverse CDF with the counter-based
uniform of each token's (seed, request, absolute position): see ``uniforms``."""

from __future__ import annotations

import torch

from .uniforms import counter_uniforms

# Below MIN_TEMPERATURE a sample is the argmax in all but name (use 0), and far below it
# logits / T overflows fp32 to inf and the softmax to NaN (T = 1e-40 sampled token -1); above
# MAX_TEMPERATURE the distribution is uniform noise (T = inf sampled it silently).
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 1e4


class Sampler:
    """How the target's next tokens are chosen, shared by every request of one run.

    Parameters
    ----------
    temperature : 0 for greedy decoding, or in [MIN_TEMPERATURE, MAX_TEMPERATURE] to sample
        from softmax(logits / temperature).
    top_p : nucleus mass in (0, 1]; 1 keeps the whole distribution.
    seed : keys the uniforms (with the request and the position of the token they sample), so
        a seed gives the same tokens whatever the strategy, tree sizes or timings.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed

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

    def uniforms(self, requests: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """requests: (B,) int64; positions: (B, M) int64 absolute positions of the tokens
        sampled -> (B, M) fp32 uniforms in [0, 1) on their device."""
        return counter_uniforms(self.seed, requests, positions)

    def pick(self, logits: torch.Tensor, requests: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row of logits (B, V): the argmax, or a sample by inverse CDF with
        the uniform of (request, position). requests, positions: (B,) int64, the request
        index and the absolute position of the token picked. Returns (B,) int64 on the
        logits' device."""
        if self.greedy:
            return logits.argmax(-1)
        probs = self.probs(logits)
        u = self.uniforms(requests, positions[:, None])
        # The smallest v with cdf(v) > u, as in verify_sample, clamped to the last token of
        # positive probability (fp32 round-off can leave the cdf's end below u).
        v = torch.searchsorted(probs.cumsum(-1), u, right=True)[:, 0]
        vocab = torch.arange(probs.shape[-1], device=probs.device)
        last_positive = torch.where(probs > 0, vocab, -1).amax(-1)
        return torch.minimum(v, last_positive)
