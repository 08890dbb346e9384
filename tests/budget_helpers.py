"""Shared by the budget-policy tests: drafter logits of a chosen sharpness."""

import torch


def draft_logits(batch, positions, vocab, sharpness, seed=0) -> torch.Tensor:
    """(batch, positions, vocab) fp32 logits; larger ``sharpness`` = a more peaked drafter."""
    generator = torch.Generator().manual_seed(seed)
    return sharpness * torch.randn(batch, positions, vocab, generator=generator)
