"""The drafter's training objective: for every root of a sequence, the block's drafted
positions against the target's next tokens, hard (argmax) and optionally soft (top-k)."""

from __future__ import annotations

import torch

from bastion.drafter import DFlashDrafter

from .features import Sequence
from .fused_ce import linear_cross_entropy

IGNORE = -100


def position_weights(block_size: int, decay: float) -> torch.Tensor:
    """(block_size - 1,) fp32 loss weights ``decay ** k``, mean 1: the first drafted position
    gates every round, so it weighs most."""
    w = decay ** torch.arange(block_size - 1, dtype=torch.float32)
    return w / w.mean()


def training_roots(seq: Sequence) -> torch.Tensor:
    """(R,) int64: every root of ``seq`` with at least one target after it, from the first
    generated token (the engine's first root) on."""
    return torch.arange(seq.prompt_len, seq.prompt_len + seq.roots)


def block_window(seq: Sequence, anchors: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``anchors[m] + k`` for k < width, clamped into the sequence, and whether each
    is inside it: ((M, width) int64, (M, width) bool)."""
    idx = anchors[:, None] + torch.arange(width)
    inside = idx < len(seq.targets)
    return idx.clamp(max=len(seq.targets) - 1), inside


def block_labels(seq: Sequence, anchors: torch.Tensor, width: int) -> torch.Tensor:
    """(M, width) int64 target ids: ``targets[anchors[m] + k]`` (the token at anchor + k + 1),
    IGNORE past the sequence's end."""
    idx, inside = block_window(seq, anchors, width)
    return torch.where(inside, seq.targets[idx], IGNORE)


def soft_labels(drafter: DFlashDrafter, seq: Sequence, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k distribution at every drafted position, over the draft vocabulary.

    Returns draft indices (M, P, k) int64 (0 where a token is outside the draft vocabulary or
    the position past the end) and probabilities (M, P, k) fp32 (0 there; the rest renormalised
    to sum to 1), P = block_size - 1.
    """
    idx, inside = block_window(seq, anchors, drafter.block_size - 1)
    ids = drafter.to_draft_ids(seq.topk_ids[idx], missing=IGNORE)
    logits = seq.topk_logits[idx].masked_fill(ids == IGNORE, float("-inf"))
    probs = logits.softmax(-1).nan_to_num(0.0) * inside[..., None]
    return ids.clamp(min=0), probs


def label_weight(drafter: DFlashDrafter, seq: Sequence, weights: torch.Tensor, anchors: torch.Tensor | None = None) -> float:
    """The total position weight of ``seq``'s labels (what ``sequence_loss`` returns second),
    without the forward: a step divides every sequence's loss by its sum before backward."""
    anchors = training_roots(seq) if anchors is None else anchors
    labels = drafter.to_draft_ids(block_labels(seq, anchors, drafter.block_size - 1), missing=IGNORE)
    return float((weights * (labels != IGNORE)).sum())


def sequence_loss(drafter: DFlashDrafter, seq: Sequence, weights: torch.Tensor, soft: float = 0.0,
                  scale: torch.Tensor | None = None, anchors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-weighted loss of every block of one sequence, in one drafter forward.

    seq: the sequence (its features multiplied by ``scale``, (F,), if given); weights:
    (block_size - 1,) per-position weights; soft: the share of the soft (teacher top-k)
    cross-entropy in the mix; anchors: (M,) roots, default every training root.
    Returns (the weighted loss summed over labels, a scalar: divide by the step's
    ``label_weight`` total; (2, block_size - 1) fp32, top-1 hits and label counts per position).
    """
    if getattr(drafter.target.lm_head, "bias", None) is not None:
        raise ValueError("training scores through the target's lm_head weight alone; an lm_head with a bias is not supported")
    device = drafter.fc.weight.device
    anchors = training_roots(seq) if anchors is None else anchors
    features = seq.features.to(device)
    if scale is not None:
        features = features * scale.to(device=device, dtype=features.dtype)
    positions = torch.arange(len(seq.tokens), device=device)[None]
    hidden = drafter.anchor_hidden(features[None], positions, seq.tokens[None].to(device), anchors[None].to(device))[0]
    labels = drafter.to_draft_ids(block_labels(seq, anchors, drafter.block_size - 1), missing=IGNORE)
    row_weights = weights * (labels != IGNORE)
    ids, probs = soft_labels(drafter, seq, anchors) if soft > 0 else (None, None)
    flat = lambda t: None if t is None else t.flatten(0, 1).to(device)  # noqa: E731  (M, P, ...) -> (M * P, ...)
    loss, hits = linear_cross_entropy(hidden.flatten(0, 1), drafter.head_weight(), flat(labels), flat(row_weights),
                                      flat(ids), flat(probs), soft)
    stats = torch.stack([hits.view(labels.shape).sum(0).cpu(), (labels != IGNORE).sum(0)]).float()
    return loss, stats
