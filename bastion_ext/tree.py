"""The draft tree and the verify result as values: fixed-capacity tensors plus helpers.

Field names, shapes and padding values are those of ``docs/ops.md``. Helpers that build
tensors (``dense_mask``, ``verify_visibility``, ``cut``) use torch ops only and never sync
with the host; the printers (``pretty``, ``__repr__``) read values and are for humans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch


@dataclass(repr=False)
class DraftTree:
    """A batch of draft trees of capacity ``max_nodes`` (N), nodes in pop order.

    Attributes
    ----------
    tokens : (B, N) int64
        Token of node i; -1 past ``n_nodes``.
    parents : (B, N) int32
        Parent node, -1 for children of the root (and for padding).
    depth : (B, N) int32
        1 for children of the root; 0 past ``n_nodes``.
    positions : (B, N) int64
        ``context_lens[b] + depth``; -1 past ``n_nodes``.
    scores : (B, N) float32
        Log path probability; -inf past ``n_nodes``.
    n_nodes : (B,) int32
        Nodes in each tree (the cut).
    ancestor_bits : (B, N, ceil(N / 32)) int32
        Bit ``j % 32`` of word ``j // 32`` of row i set iff node j is i or an ancestor of i.
    first_child : (B, N + 1) int32
        Verify indexing (0 = root, i + 1 = node i): the first child in pop order, -1 = leaf.
    next_sibling : (B, N) int32
        Next child of the same parent in pop order, -1 = last.
    draft_positions : int
        P, the drafter positions the tree was built from (the deepest possible node).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depth: torch.Tensor
    positions: torch.Tensor
    scores: torch.Tensor
    n_nodes: torch.Tensor
    ancestor_bits: torch.Tensor
    first_child: torch.Tensor
    next_sibling: torch.Tensor
    draft_positions: int

    @staticmethod
    def layout(batch: int, max_nodes: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Dtype and shape of every tensor field (docs/ops.md): the one table that ``empty``,
        the ``out=`` check and the op's fake read."""
        rows = (batch, max_nodes)
        return {
            "tokens": (torch.int64, rows),
            "parents": (torch.int32, rows),
            "depth": (torch.int32, rows),
            "positions": (torch.int64, rows),
            "scores": (torch.float32, rows),
            "n_nodes": (torch.int32, (batch,)),
            "ancestor_bits": (torch.int32, (batch, max_nodes, (max_nodes + 31) // 32)),
            "first_child": (torch.int32, (batch, max_nodes + 1)),
            "next_sibling": (torch.int32, rows),
        }

    @classmethod
    def empty(cls, batch: int, max_nodes: int, draft_positions: int, device: torch.device | str = "cpu") -> DraftTree:
        """Uninitialised output buffers for ``build_tree(..., out=)`` (e.g. for CUDA graphs)."""
        tensors = {name: torch.empty(shape, dtype=dtype, device=device) for name, (dtype, shape) in cls.layout(batch, max_nodes).items()}
        return cls(**tensors, draft_positions=draft_positions)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def max_nodes(self) -> int:
        return self.tokens.shape[1]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """The output tensors by name, in ``docs/ops.md`` order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "draft_positions"}

    def dense_mask(self, n: int | None = None) -> torch.Tensor:
        """(B, n, n) bool over the first n nodes (default N): ``[b, i, j]`` iff node j is node i
        or an ancestor of node i."""
        n = self.max_nodes if n is None else n
        j = torch.arange(n, device=self.device)
        words = self.ancestor_bits[:, :n, j // 32]  # (B, n, n): the word holding bit j of row i
        return ((words >> (j % 32).to(torch.int32)) & 1).bool()

    def verify_visibility(self, n: int) -> torch.Tensor:
        """(B, n + 1, n + 1) bool over the verify tokens [root, node 0 .. n - 1]: ``[b, i, j]``
        iff verify token i sees verify token j. Everything sees the root; the root sees only
        itself; a node sees its ancestors and itself; a padding node (past ``n_nodes``) sees the
        root and itself, so that no row is empty. (The committed context is visible to all.)"""
        batch = self.batch_size
        sees = torch.zeros((batch, n + 1, n + 1), dtype=torch.bool, device=self.device)
        sees[:, :, 0] = True
        sees[:, 1:, 1:] = self.dense_mask(n) | torch.eye(n, dtype=torch.bool, device=self.device)
        return sees

    def cut(self, n_nodes: torch.Tensor) -> DraftTree:
        """The trees cut to ``n_nodes`` (B,) int32 nodes each (clamped to the current counts).

        Nodes come in pop order and every parent and earlier sibling precedes a node, so the
        first n nodes are a tree: entries past n become padding and links past n become -1.
        The result equals a fixed-policy build with ``budgets = n_nodes``. Torch ops only.
        """
        if n_nodes.shape != (self.batch_size,):
            raise ValueError(f"n_nodes must have shape ({self.batch_size},), got {tuple(n_nodes.shape)}")
        n = torch.minimum(n_nodes.to(device=self.device, dtype=torch.int32), self.n_nodes)
        keep = torch.arange(self.max_nodes, device=self.device, dtype=torch.int32) < n[:, None]  # (B, N)
        limit = n[:, None]

        def pad(t: torch.Tensor, value: float) -> torch.Tensor:
            return torch.where(keep, t, torch.full((), value, dtype=t.dtype, device=t.device))

        def drop_links(links: torch.Tensor) -> torch.Tensor:
            return torch.where(links >= limit, torch.full((), -1, dtype=links.dtype, device=links.device), links)

        return replace(
            self,
            tokens=pad(self.tokens, -1),
            parents=pad(self.parents, -1),
            depth=pad(self.depth, 0),
            positions=pad(self.positions, -1),
            scores=pad(self.scores, -math.inf),
            n_nodes=n,
            # Rows past n are zeroed; rows below n only hold bits of their ancestors (< n).
            ancestor_bits=self.ancestor_bits * keep[:, :, None],
            first_child=drop_links(self.first_child),
            next_sibling=drop_links(self.next_sibling),
        )

    def pretty(self, tokenizer=None, batch_index: int = 0, max_lines: int = 200) -> str:
        """An indented picture of one request's tree: token, depth and path probability.

        tokenizer: anything with ``decode(list[int]) -> str`` (token text is shown beside the
        id), or None for ids only. Children are listed best first.
        """
        if not 0 <= batch_index < self.batch_size:
            raise ValueError(f"batch_index must be in [0, {self.batch_size}), got {batch_index}")
        tokens = self.tokens[batch_index].tolist()
        scores = self.scores[batch_index].tolist()
        first_child = self.first_child[batch_index].tolist()
        next_sibling = self.next_sibling[batch_index].tolist()
        n = int(self.n_nodes[batch_index])
        lines = [f"root (request {batch_index}: {n} of {self.max_nodes} nodes, {self.draft_positions} positions)"]
        # Depth-first from the root; a stack of (node, depth), siblings pushed in reverse.
        stack = [(c, 1) for c in reversed(self._children(first_child[0], next_sibling))]
        while stack and len(lines) <= max_lines:
            node, depth = stack.pop()
            label = str(tokens[node])
            if tokenizer is not None:
                label = f"{tokenizer.decode([tokens[node]])!r} ({tokens[node]})"
            lines.append(f"{'  ' * depth}{label}  depth={depth} p={math.exp(scores[node]):.4f}")
            stack.extend((c, depth + 1) for c in reversed(self._children(first_child[node + 1], next_sibling)))
        if stack:
            lines.append(f"  ... ({n - (len(lines) - 1)} more nodes)")
        return "\n".join(lines)

    @staticmethod
    def _children(first: int, next_sibling: list[int]) -> list[int]:
        children = []
        while first >= 0:
            children.append(first)
            first = next_sibling[first]
        return children

    def __repr__(self) -> str:
        head = (
            f"DraftTree(batch={self.batch_size}, max_nodes={self.max_nodes}, "
            f"draft_positions={self.draft_positions}, n_nodes={self.n_nodes.tolist()}, device={self.device})"
        )
        return head + "\n" + self.pretty(max_lines=16)


@dataclass
class VerifyResult:
    """What one verify pass accepted.

    Attributes
    ----------
    accepted_nodes : (B, P) int32
        Node indices along the accepted path, -1 after it.
    accept_len : (B,) int32
        Accepted draft tokens, 0..P.
    bonus : (B,) int64
        The target's token after the accepted path (always emitted).
    """

    accepted_nodes: torch.Tensor
    accept_len: torch.Tensor
    bonus: torch.Tensor

    @staticmethod
    def layout(batch: int, draft_positions: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Dtype and shape of every field: read by ``empty``, the ``out=`` check and the fakes."""
        return {
            "accepted_nodes": (torch.int32, (batch, draft_positions)),
            "accept_len": (torch.int32, (batch,)),
            "bonus": (torch.int64, (batch,)),
        }

    @classmethod
    def empty(cls, batch: int, draft_positions: int, device: torch.device | str = "cpu") -> VerifyResult:
        """Uninitialised output buffers for ``verify_greedy/verify_sample(..., out=)``."""
        return cls(**{name: torch.empty(shape, dtype=dtype, device=device) for name, (dtype, shape) in cls.layout(batch, draft_positions).items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("accepted_nodes", "accept_len", "bonus")}
