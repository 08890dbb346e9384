"""``DraftTree`` and ``VerifyResult`` in SGLang's EAGLE verify layout, both ways.

SGLang verifies D = ``draft_token_num`` tokens per request, the root (the last committed
token) at local index 0 and node i at i + 1, so D = N + 1 for a tree of capacity N: the same
order as our verify indexing. Its tree is first-child / next-sibling links (int64, -1 = none,
``retrive_next_token`` / ``retrive_next_sibling``), its flat indices ``b * D + i``
(``retrive_index``), and its greedy verify (``verify_tree_greedy``) fills ``predicts``,
``accept_index`` and ``accept_token_num``. Padding nodes (past ``n_nodes``) keep the fixed D
that SGLang's offsets and CUDA graphs need, as unreachable children of the root
(``layout.padded_verify_inputs``); their mask rows also see the prefix.

Torch ops only: nothing here reads the device or imports SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

from bastion_ext.integrations.layout import check_batch, pack_bits, padded_verify_inputs, parents_from_links, tree_from_layout
from bastion_ext.tree import DraftTree, VerifyResult


class TreeMaskMode(IntEnum):
    """SGLang's tree mask layouts (same values as its ``TreeMaskMode``)."""

    FULL_MASK = 0
    QLEN_ONLY = 1
    QLEN_ONLY_BITPACKING = 2


# QLEN_ONLY_BITPACKING holds a row in one integer of 1, 2 or 4 bytes.
MAX_BITPACKED_DRAFT_TOKENS = 32


@dataclass
class SGLangTree:
    """What ``verify_tree_greedy`` and the target forward read (D = N + 1).

    Attributes
    ----------
    candidates : (B, D) int64
        Column 0 the root token, column i + 1 node i's token; 0 for padding.
    retrive_index : (B, D) int64
        ``b * D + i``.
    retrive_next_token : (B, D) int64
        First child's local index, -1 = leaf.
    retrive_next_sibling : (B, D) int64
        Next sibling's local index, -1 = last (and for the root).
    positions : (B * D,) int64
        ``seq_len + depth``: the root at ``seq_len``, padding at ``seq_len + 1``.
    """

    candidates: torch.Tensor
    retrive_index: torch.Tensor
    retrive_next_token: torch.Tensor
    retrive_next_sibling: torch.Tensor
    positions: torch.Tensor


@dataclass
class SGLangAccept:
    """``verify_tree_greedy``'s outputs.

    Attributes
    ----------
    predicts : (B * D,) int32
        At each accepted flat index (the root included) the token emitted after it: the next
        accepted token, or the bonus after the last; -1 elsewhere.
    accept_index : (B, P + 1) int32
        ``[b * D, flat index of each accepted node..., -1...]``.
    accept_token_num : (B,) int32
        Accepted draft tokens (neither the root nor the bonus).
    """

    predicts: torch.Tensor
    accept_index: torch.Tensor
    accept_token_num: torch.Tensor


def _local(node_links: torch.Tensor) -> torch.Tensor:
    """Node indices (int32, -1 = none) to SGLang local indices (int64, -1 = none)."""
    links = node_links.to(torch.int64)
    return torch.where(links >= 0, links + 1, links)


def to_sglang(tree: DraftTree, root_tokens: torch.Tensor, seq_lens: torch.Tensor) -> SGLangTree:
    """The tree as SGLang's verify inputs, D = ``tree.max_nodes + 1`` tokens per request.

    Parameters
    ----------
    tree : DraftTree
        N = ``tree.max_nodes``.
    root_tokens : (B,) int64
        Each request's last committed token (SGLang's ``verified_id``).
    seq_lens : (B,) int64
        Committed tokens before the root, i.e. the root's position.

    Returns
    -------
    SGLangTree
    """
    batch, d = tree.batch_size, tree.max_nodes + 1
    check_batch(root_tokens, "root_tokens", batch)
    check_batch(seq_lens, "seq_lens", batch)
    tokens, positions = padded_verify_inputs(tree, seq_lens)
    minus_one = torch.full((batch, 1), -1, dtype=torch.int64, device=tree.device)
    return SGLangTree(
        candidates=torch.cat([root_tokens.to(torch.int64)[:, None], tokens], 1),
        retrive_index=torch.arange(batch * d, dtype=torch.int64, device=tree.device).view(batch, d),
        retrive_next_token=_local(tree.first_child),
        retrive_next_sibling=torch.cat([minus_one, _local(tree.next_sibling)], 1),
        positions=positions.flatten(),
    )


def sglang_tree_mask(
    tree: DraftTree,
    mode: TreeMaskMode,
    seq_lens: torch.Tensor | None = None,
    seq_lens_sum: int | None = None,
) -> torch.Tensor:
    """The tree mask in one of SGLang's three layouts (D = N + 1; row i = verify token i).

    Row i sees column j iff j is the root, i itself or an ancestor of i: the rows of
    ``DraftTree.verify_visibility``.

    Parameters
    ----------
    tree : DraftTree
    mode : TreeMaskMode
    seq_lens : (B,) int64
        FULL_MASK only: the prefix each request's rows also see.
    seq_lens_sum : int
        FULL_MASK only: ``sum(seq_lens)``, known on the host (as SGLang passes it), since
        it sizes the output.

    Returns
    -------
    FULL_MASK : (seq_lens_sum * D + B * D * D,) bool
        Request b's ``[D, seq_lens[b] + D]`` block (prefix columns all True), flattened,
        the blocks one after the other.
    QLEN_ONLY : (B * D * D,) bool
        The ``[D, D]`` blocks alone (the prefix is implicit).
    QLEN_ONLY_BITPACKING : (B * D,) uint8 if D <= 8, uint16 if D <= 16, uint32 if D <= 32
        Bit j of row i's integer (bit 0 the root).
    """
    batch, d = tree.batch_size, tree.max_nodes + 1
    sees = tree.verify_visibility(tree.max_nodes)  # (B, D, D)
    if mode == TreeMaskMode.QLEN_ONLY:
        return sees.flatten()
    if mode == TreeMaskMode.QLEN_ONLY_BITPACKING:
        if d > MAX_BITPACKED_DRAFT_TOKENS:
            raise ValueError(f"QLEN_ONLY_BITPACKING holds at most {MAX_BITPACKED_DRAFT_TOKENS} draft tokens, got D = {d}")
        dtype = torch.uint8 if d <= 8 else torch.uint16 if d <= 16 else torch.uint32
        # One int32 word per row; its bit pattern, not its sign, is the mask.
        return (pack_bits(sees)[..., 0].to(torch.int64) & 0xFFFFFFFF).to(dtype).flatten()
    if mode != TreeMaskMode.FULL_MASK:
        raise ValueError(f"mode must be a TreeMaskMode, got {mode!r}")
    if seq_lens is None or not isinstance(seq_lens_sum, int):
        raise ValueError("FULL_MASK needs seq_lens (a tensor) and seq_lens_sum (an int)")
    check_batch(seq_lens, "seq_lens", batch)
    seq_lens = seq_lens.to(torch.int64)
    requests = torch.arange(batch, device=tree.device)
    start = d * (torch.cumsum(seq_lens, 0) - seq_lens + requests * d)  # where block b begins
    rows = torch.arange(d, device=tree.device)
    # Flat index of [b, i, seq_lens[b] + j]: the tree part of row i of block b.
    width = (seq_lens + d)[:, None, None]
    index = start[:, None, None] + rows[:, None] * width + seq_lens[:, None, None] + rows[None, None, :]
    mask = torch.ones(seq_lens_sum * d + batch * d * d, dtype=torch.bool, device=tree.device)
    return mask.index_put((index.flatten(),), sees.flatten())


def from_sglang(
    candidates: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    seq_lens: torch.Tensor,
    draft_positions: int,
    scores: torch.Tensor | None = None,
) -> DraftTree:
    """An SGLang tree as a ``DraftTree`` of capacity N = D - 1, for our verify ops.

    Siblings may come in any order (SGLang's walk and ours both try them in link order).
    Local indices not reachable from the root become padding; the reachable ones must be
    ``1 .. n`` with parents before children (as SGLang's builders lay them out).

    Parameters
    ----------
    candidates : (B, D) int64
        Column 0 the root token.
    retrive_next_token, retrive_next_sibling : (B, D) int64
        Local indices, -1 = none.
    seq_lens : (B,) int64
        The root's position (``positions`` become ``seq_lens + depth``).
    draft_positions : int
        P of the tree: SGLang's ``accept_index`` width minus one.
    scores : (B, D - 1) float32, optional
        Path log-probabilities of the nodes, if the engine has them; default 0.

    Returns
    -------
    DraftTree
    """
    check_batch(seq_lens, "seq_lens", candidates.shape[0])
    parents = parents_from_links(retrive_next_token, retrive_next_sibling)
    return tree_from_layout(candidates, parents, retrive_next_token, retrive_next_sibling,
                            seq_lens.to(torch.int64), draft_positions, scores)  # fmt: skip


def to_sglang_accept(result: VerifyResult, tree: DraftTree) -> SGLangAccept:
    """A ``VerifyResult`` as ``verify_tree_greedy`` would have written it.

    Parameters
    ----------
    result : VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    tree : DraftTree
        The tree verified (its tokens are what ``predicts`` emits along the path).

    Returns
    -------
    SGLangAccept
        predicts (B * D,) int32, accept_index (B, P + 1) int32, accept_token_num (B,) int32.
    """
    batch, d = tree.batch_size, tree.max_nodes + 1
    device = tree.device
    nodes = result.accepted_nodes.to(torch.int64)
    base = (torch.arange(batch, device=device) * d)[:, None]
    flat = torch.cat([base, torch.where(nodes >= 0, base + 1 + nodes, nodes)], 1)  # (B, P + 1)
    steps = torch.arange(flat.shape[1], device=device)
    accept_len = result.accept_len.to(torch.int64)[:, None]
    # After the t-th accepted token comes the (t + 1)-th node's token, after the last the bonus.
    path_tokens = tree.tokens.gather(1, nodes.clamp(min=0))
    emitted = torch.where(steps < accept_len, torch.nn.functional.pad(path_tokens, (0, 1)), result.bonus[:, None])
    written = torch.where(steps <= accept_len, flat, batch * d)  # the spare slot past the end
    predicts = torch.full((batch * d + 1,), -1, dtype=torch.int64, device=device)
    predicts = predicts.scatter(0, written.flatten(), emitted.flatten())[:-1]
    return SGLangAccept(predicts=predicts.to(torch.int32), accept_index=flat.to(torch.int32), accept_token_num=result.accept_len.to(torch.int32))


def from_sglang_accept(predicts: torch.Tensor, accept_index: torch.Tensor, accept_token_num: torch.Tensor) -> VerifyResult:
    """``verify_tree_greedy``'s outputs as a ``VerifyResult`` (P = S - 1).

    Parameters
    ----------
    predicts : (B * D,) int32
    accept_index : (B, S) int32
        Flat indices ``b * D + i`` (SGLang's ``retrive_index``), -1 after the path.
    accept_token_num : (B,) int32

    Returns
    -------
    VerifyResult
        accepted_nodes (B, S - 1) int32, accept_len (B,) int32, bonus (B,) int64.
    """
    batch = accept_index.shape[0]
    check_batch(accept_token_num, "accept_token_num", batch)
    if predicts.dim() != 1 or predicts.shape[0] % batch:
        raise ValueError(f"predicts must have shape (B * D,) with B = {batch}, got {tuple(predicts.shape)}")
    d = predicts.shape[0] // batch
    flat = accept_index[:, 1:].to(torch.int64)
    base = (torch.arange(batch, device=flat.device) * d)[:, None]
    last = accept_index.to(torch.int64).gather(1, accept_token_num.to(torch.int64)[:, None])[:, 0]
    return VerifyResult(
        accepted_nodes=torch.where(flat >= 0, flat - base - 1, flat).to(torch.int32),
        accept_len=accept_token_num.to(torch.int32),
        bonus=predicts.to(torch.int64)[last],
    )

