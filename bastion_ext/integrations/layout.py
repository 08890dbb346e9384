"""The verify layout both engines share, with torch ops only.

A request's M = N + 1 verify tokens in a row: column 0 the root, column ``i + 1`` node i
(``docs/ops.md``, "Indexing"), at a fixed N per batch. Here: the padding rules for nodes past
``n_nodes`` (one place for both engines), and a ``DraftTree`` rebuilt from the links an engine
hands over, as first-child / next-sibling links (SGLang) or as parents read off a visibility
matrix (vLLM). Walks along links are sequential, so they run as pointer doubling:
``ceil(log2 M)`` gathers, a number fixed by the shape, so nothing is read back to the host and
``torch.compile`` traces a fixed graph.
"""

from __future__ import annotations

import math

import torch

from bastion_ext.tree import DraftTree


def check_batch(t: torch.Tensor, name: str, batch: int) -> None:
    """``ValueError`` unless ``t`` has shape (batch,)."""
    if tuple(t.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(t.shape)}")


def padded_verify_inputs(tree: DraftTree, context_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nodes' tokens and the verify tokens' positions, padding as the engines need it.

    A padding node is an unreachable child of the root: token 0 (a valid embedding row, never
    -1) at position ``context_len + 1``; its mask row (``DraftTree.verify_visibility``) sees
    the root and itself, and no link leads to it.

    Parameters
    ----------
    tree : DraftTree
    context_lens : (B,) int64
        The root's position.

    Returns
    -------
    tokens : (B, N) int64
    positions : (B, N + 1) int64
        ``context_len + depth``, the root at column 0.
    """
    check_batch(context_lens, "context_lens", tree.batch_size)
    real = torch.arange(tree.max_nodes, device=tree.device) < tree.n_nodes[:, None]
    zero = torch.zeros((), dtype=torch.int64, device=tree.device)
    depth = torch.where(real, tree.depth.to(torch.int64), zero + 1)
    positions = context_lens.to(torch.int64)[:, None] + torch.nn.functional.pad(depth, (1, 0))
    return torch.where(real, tree.tokens, zero), positions


def _doublings(m: int) -> int:
    """Gathers after which a pointer walk of up to m - 1 steps has reached its end."""
    return max(m - 1, 1).bit_length()


def _scatter_rows(index: torch.Tensor, values: torch.Tensor, fill: int) -> torch.Tensor:
    """(B, M) int64: ``out[b, index[b, i]] = values[b, i]`` where ``index >= 0``, else ``fill``.
    Negative indices go to a spare column that is dropped, so no entry needs a host check."""
    batch, m = index.shape
    out = torch.full((batch, m + 1), fill, dtype=torch.int64, device=index.device)
    return out.scatter(1, torch.where(index >= 0, index, m), values)[:, :m]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack the last dimension of ``mask``: bit ``j % 32`` of word ``j // 32``.

    Parameters
    ----------
    mask : (..., n) bool

    Returns
    -------
    (..., ceil(n / 32)) int32
        The words as two's-complement int32 (bit 31 makes a word negative), the layout of
        ``DraftTree.ancestor_bits``.
    """
    n = mask.shape[-1]
    words = (n + 31) // 32
    padded = torch.nn.functional.pad(mask.to(torch.int64), (0, words * 32 - n))
    weights = torch.ones(32, dtype=torch.int64, device=mask.device) << torch.arange(32, device=mask.device)
    packed = (padded.unflatten(-1, (words, 32)) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def parents_from_links(first_child: torch.Tensor, next_sibling: torch.Tensor) -> torch.Tensor:
    """Each verify token's parent, from first-child / next-sibling links in any sibling order.

    Parameters
    ----------
    first_child, next_sibling : (B, M) int64
        Verify layout; entries are columns, -1 = none.

    Returns
    -------
    (B, M) int64
        The parent's column; -1 for the root and for tokens no link points to.
    """
    batch, m = first_child.shape
    columns = torch.arange(m, device=first_child.device).expand(batch, m)
    parent_of_first = _scatter_rows(first_child, columns, -1)
    previous = _scatter_rows(next_sibling, columns, -1)
    # Walk back along the sibling chain to its head, the first child, which knows its parent.
    head = torch.where(previous >= 0, previous, columns)
    for _ in range(_doublings(m)):
        head = head.gather(1, head)
    return parent_of_first.gather(1, head)


def links_from_parents(parents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First-child / next-sibling links from parents, siblings in column order.

    Parameters
    ----------
    parents : (B, M) int64
        Verify layout; the parent's column, -1 for the root and for unlinked (padding) tokens.

    Returns
    -------
    first_child, next_sibling : (B, M) int64
        Verify layout, -1 = none; the root's next sibling is -1.
    """
    batch, m = parents.shape
    columns = torch.arange(m, device=parents.device)
    none = torch.full((), m, dtype=torch.int64, device=parents.device)
    # [b, p, c]: c is a child of p; [b, i, j]: j is a later sibling of i. O(M^2) memory, as a
    # dense mask of the same tree already is.
    child = parents[:, None, :] == columns[None, :, None]
    first_child = torch.where(child, columns, none).amin(-1)
    later = (parents[:, :, None] == parents[:, None, :]) & (parents[:, :, None] >= 0) & (columns[None, :] > columns[:, None])
    next_sibling = torch.where(later, columns, none).amin(-1)
    minus_one = torch.full((), -1, dtype=torch.int64, device=parents.device)
    return torch.where(first_child < m, first_child, minus_one), torch.where(next_sibling < m, next_sibling, minus_one)


def tree_from_layout(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    context_lens: torch.Tensor,
    draft_positions: int,
    scores: torch.Tensor | None = None,
) -> DraftTree:
    """A ``DraftTree`` of capacity N = M - 1 from a tree in the verify layout.

    Tokens not reachable from the root are padding. The reachable ones must be columns
    ``1 .. n`` (padding at the end, as every engine pads), with each parent in a column
    before its children, for the result to be a ``DraftTree``; that is the caller's promise,
    not checked here (a check would read the device).

    Parameters
    ----------
    tokens : (B, M) int64
        Column 0 (the root's token) is not used.
    parents, first_child, next_sibling : (B, M) int64
        Verify layout, -1 = none (``parents_from_links`` / ``links_from_parents``).
    context_lens : (B,) int64
        The root's position; node positions are ``context_lens + depth``.
    draft_positions : int
        P of the result (the longest path a verify may accept).
    scores : (B, N) float32, optional
        Path log-probabilities to keep for the reachable nodes; default 0 (engines' trees
        carry none). Padding becomes -inf either way.

    Returns
    -------
    DraftTree
        Every field in the padding of ``docs/ops.md``; ``n_nodes`` = the reachable count.
    """
    batch, m = parents.shape
    device = parents.device
    columns = torch.arange(m, device=device)
    up = torch.where(parents >= 0, parents, columns)  # the root and unlinked tokens point at themselves
    seen = (up[:, :, None] == columns) | (columns[:, None] == columns)  # [b, i, j]: j is i or i's parent
    for _ in range(_doublings(m)):
        # ``seen`` covers the ancestors up to 2^k steps away and ``up`` is the 2^k-th: append
        # the ancestors' own sets to double the reach.
        seen = seen | seen.gather(1, up[:, :, None].expand(batch, m, m))
        up = up.gather(1, up)
    reachable = seen[:, 1:, 0]  # (B, N): the root is among the ancestors
    ancestors = seen[:, 1:, 1:] & reachable[:, :, None]
    minus_one = torch.full((), -1, dtype=torch.int64, device=device)

    def node_field(values: torch.Tensor, pad: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.where(reachable, values, torch.full((), pad, dtype=values.dtype, device=device)).to(dtype)

    def as_nodes(links: torch.Tensor) -> torch.Tensor:
        """Columns to node indices (column c is node c - 1); -1 stays -1."""
        return torch.where(links >= 0, links - 1, minus_one)

    depth = ancestors.sum(-1, dtype=torch.int32)
    if scores is None:
        scores = torch.zeros((batch, m - 1), dtype=torch.float32, device=device)
    first_child = as_nodes(first_child)
    return DraftTree(
        tokens=node_field(tokens[:, 1:], -1, torch.int64),
        parents=node_field(as_nodes(parents[:, 1:]), -1, torch.int32),
        depth=depth,
        positions=node_field(context_lens[:, None] + depth, -1, torch.int64),
        scores=node_field(scores, -math.inf, torch.float32),
        n_nodes=reachable.sum(-1, dtype=torch.int32),
        ancestor_bits=pack_bits(ancestors),
        first_child=torch.cat([first_child[:, :1], node_field(first_child[:, 1:], -1, torch.int64)], 1).to(torch.int32),
        next_sibling=node_field(as_nodes(next_sibling[:, 1:]), -1, torch.int32),
        draft_positions=draft_positions,
    )


def tree_from_parents(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    context_lens: torch.Tensor,
    draft_positions: int,
    scores: torch.Tensor | None = None,
) -> DraftTree:
    """A ``DraftTree`` from parents alone, siblings in column order (the order of pop-order
    trees and of SGLang's EAGLE builder): ``links_from_parents``, then ``tree_from_layout``
    (whose arguments and promises these are)."""
    first_child, next_sibling = links_from_parents(parents)
    return tree_from_layout(tokens, parents, first_child, next_sibling, context_lens, draft_positions, scores)
