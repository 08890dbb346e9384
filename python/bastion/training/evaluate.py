"""Held-out acceptance of a drafter, walked against the target's greedy output with the
library's own ops (``build_tree`` + ``verify_greedy``): the numbers the engine would see."""

from __future__ import annotations

import torch

from bastion_ext import ops

from .features import Sequence
from .loss import block_labels


def round_lengths(accept_len: torch.Tensor) -> list[int]:
    """Tokens committed per round when rounds start at root 0 and advance by what they commit.

    accept_len: (R,) accepted drafted tokens of a round rooted at each root. A round commits
    ``accept_len + 1`` tokens (the bonus); the walk stops at the last root.
    """
    lengths, i, acc = [], 0, accept_len.tolist()
    while i < len(acc):
        lengths.append(acc[i] + 1)
        i += acc[i] + 1
    return lengths


def tree_accept_len(logits: torch.Tensor, truth: torch.Tensor, budget: int, width: int) -> torch.Tensor:
    """Accepted tokens of a best-first tree of ``budget`` nodes per root.

    logits: (R, P, V) fp32 draft logits; truth: (R, P + 1) int64 draft indices of the target's
    next P + 1 greedy tokens after each root (V where a token is outside the draft
    vocabulary: no node carries it). Returns (R,) int64.
    """
    tree = ops.build_tree(logits, k=min(width, logits.shape[-1]), max_nodes=budget)
    # The walk only reaches nodes on the true path, whose target argmax is the true next token.
    target_argmax = torch.cat([truth[:, :1], truth.gather(1, tree.depth.long())], dim=1)
    return ops.verify_greedy(tree, target_argmax).accept_len.long()


@torch.no_grad()
def evaluate(drafter, seqs: list[Sequence], tree_budgets=(16, 32, 64), tree_width: int = 8, chunk: int = 128) -> dict:
    """Held-out acceptance of ``drafter`` on ``seqs`` (their features as the engine sees them).

    Rounds start at the first generated token and advance by what each round commits, as the
    engine's loop does; only roots whose whole block has a true target count. ``dflash``: the
    drafter's argmax path; ``tree<n>``: the best-first tree of n nodes over the top
    ``tree_width`` candidates per position. Also the top-1 match rate per drafted position
    over every root (not only the walked ones).
    """
    gamma, device = drafter.block_size, drafter.fc.weight.device
    vocab = drafter.draft_vocab_size
    walks = {"dflash": [], **{f"tree{n}": [] for n in tree_budgets}}
    hits, counts = torch.zeros(gamma - 1), torch.zeros(gamma - 1)
    for seq in seqs:
        last_root = len(seq.tokens) - gamma + 1
        if last_root <= seq.prompt_len:
            continue
        anchors = torch.arange(seq.prompt_len, last_root)
        logits = torch.cat([
            drafter.anchor_logits(seq.features[None].to(device), torch.arange(len(seq.tokens), device=device)[None],
                                  seq.tokens[None].to(device), part[None].to(device))[0].cpu()
            for part in anchors.split(chunk)
        ])
        truth = drafter.to_draft_ids(block_labels(seq, anchors, gamma), missing=vocab)
        match = logits.argmax(-1) == truth[:, :-1]
        hits += match.float().sum(0)
        counts += len(anchors)
        walks["dflash"] += round_lengths(match.int().cumprod(1).sum(1))
        for n in tree_budgets:
            walks[f"tree{n}"] += round_lengths(tree_accept_len(logits, truth, n, tree_width))
    return {
        "sequences": len(seqs),
        "rounds": len(walks["dflash"]),
        **{f"{name}_tokens_per_round": round(sum(r) / max(1, len(r)), 4) for name, r in walks.items()},
        "tree_width": tree_width,
        "top1_by_position": [round(float(x), 4) for x in hits / counts.clamp(min=1)],
    }
