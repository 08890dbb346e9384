"""Slow, obviously correct versions of every op: the test oracles.

Plain Python and PyTorch, one request at a time, written to mirror ``docs/ops.md`` line by
line rather than to be fast. The compiled ops must match these exactly (trees bit for bit,
log-scores to 1e-5).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

POLICIES = ("fixed", "greedy_stop", "argmax")


@dataclass
class TreeRef:
    """One request's tree as Python lists (node ``i`` in pop order)."""

    tokens: list[int]
    parents: list[int]
    depth: list[int]
    scores: list[float]
    n_nodes: int


def topk_logprobs_ref(logits_row: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """Top-``k`` candidates of one position and their fp32 log-probabilities.

    logits_row: (V,) any float dtype. Returns tokens and ``logq`` (non-increasing),
    ties to the smaller token id, candidates of probability 0 dropped.
    """
    x = logits_row.float()
    wide = x.double()
    m = wide.max()
    lse = (m + torch.log(torch.exp(wide - m).sum())).float()
    # A stable sort on descending value keeps equal logits in token order.
    order = torch.sort(x, descending=True, stable=True).indices[:k]
    tokens, logq = [], []
    for v in order.tolist():
        lq = (x[v] - lse).item()
        if lq == -math.inf:
            break
        tokens.append(v)
        logq.append(lq)
    return tokens, logq


def _add_f32(a: float, b: float) -> float:
    """fp32 addition of two fp32 values, as every backend accumulates path scores."""
    return (torch.tensor(a, dtype=torch.float32) + torch.tensor(b, dtype=torch.float32)).item()


def expand_ref(cand_tokens: list[list[int]], cand_logq: list[list[float]], cap: int) -> TreeRef:
    """Best-first expansion over the top-K lattice, up to ``cap`` pops (docs/ops.md, step 2)."""
    positions = len(cand_tokens)
    tree = TreeRef([], [], [], [], 0)
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0

    def push(parent: int, depth: int, rank: int) -> None:
        nonlocal seq
        if rank >= len(cand_logq[depth - 1]):
            return
        base = 0.0 if parent < 0 else tree.scores[parent]
        score = _add_f32(base, cand_logq[depth - 1][rank])
        # heapq is a min-heap: negate the score; seq breaks ties by push order.
        heapq.heappush(heap, (-score, seq, parent, depth, rank))
        seq += 1

    push(-1, 1, 0)
    while heap and len(tree.tokens) < cap:
        neg_score, _, parent, depth, rank = heapq.heappop(heap)
        node = len(tree.tokens)
        tree.tokens.append(cand_tokens[depth - 1][rank])
        tree.parents.append(parent)
        tree.depth.append(depth)
        tree.scores.append(-neg_score)
        if depth < positions:
            push(node, depth + 1, 0)
        push(parent, depth, rank + 1)
    tree.n_nodes = len(tree.tokens)
    return tree


def cut_ref(scores: list[float], policy: str, latency: list[float] | None, accept_scale: float) -> int:
    """Where to cut a pop sequence of log path scores (docs/ops.md, step 3)."""
    avail = len(scores)
    if policy == "fixed":
        return avail
    speedups = []
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    acc = f32(0.0)
    for n in range(1, avail + 1):
        acc = acc + f32(math.exp(scores[n - 1]))
        gain = f32(1.0) + f32(accept_scale) * acc
        speedups.append((gain / f32(latency[n - 1])).item())
    if policy == "greedy_stop":
        for n in range(1, avail):
            if speedups[n] < speedups[n - 1]:
                return n
        return avail
    best = max(speedups)
    return speedups.index(best) + 1


def build_tree_ref(
    draft_logits: torch.Tensor,
    k: int,
    max_nodes: int,
    policy: str = "fixed",
    budgets: list[int] | None = None,
    latency_table: torch.Tensor | None = None,
    accept_scale: list[float] | None = None,
    context_lens: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Reference ``build_tree``: same inputs and outputs as ``bastion_ext.ops.build_tree``.

    draft_logits: (B, P, V) float. latency_table: (B or 1, max_nodes) fp32.
    Returns a dict of the output tensors of docs/ops.md (on the CPU).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    batch, positions, _ = draft_logits.shape
    budgets = budgets if budgets is not None else [max_nodes] * batch
    accept_scale = accept_scale if accept_scale is not None else [1.0] * batch
    context_lens = context_lens if context_lens is not None else [0] * batch
    n = max_nodes
    words = (n + 31) // 32
    out = {
        "tokens": torch.full((batch, n), -1, dtype=torch.int64),
        "parents": torch.full((batch, n), -1, dtype=torch.int32),
        "depth": torch.zeros((batch, n), dtype=torch.int32),
        "positions": torch.full((batch, n), -1, dtype=torch.int64),
        "scores": torch.full((batch, n), -math.inf, dtype=torch.float32),
        "n_nodes": torch.zeros((batch,), dtype=torch.int32),
        "ancestor_bits": torch.zeros((batch, n, words), dtype=torch.int32),
        "first_child": torch.full((batch, n + 1), -1, dtype=torch.int32),
        "next_sibling": torch.full((batch, n), -1, dtype=torch.int32),
    }
    for b in range(batch):
        cands = [topk_logprobs_ref(draft_logits[b, p], k) for p in range(positions)]
        tree = expand_ref([c[0] for c in cands], [c[1] for c in cands], budgets[b])
        latency = None
        if policy != "fixed":
            row = latency_table[b if latency_table.shape[0] > 1 else 0]
            latency = row.float().tolist()
        scale = accept_scale[b if len(accept_scale) > 1 else 0]
        cut = cut_ref(tree.scores, policy, latency, scale)
        out["n_nodes"][b] = cut
        out["tokens"][b, :cut] = torch.tensor(tree.tokens[:cut], dtype=torch.int64)
        out["parents"][b, :cut] = torch.tensor(tree.parents[:cut], dtype=torch.int32)
        out["depth"][b, :cut] = torch.tensor(tree.depth[:cut], dtype=torch.int32)
        out["positions"][b, :cut] = context_lens[b] + torch.tensor(tree.depth[:cut], dtype=torch.int64)
        out["scores"][b, :cut] = torch.tensor(tree.scores[:cut], dtype=torch.float32)
        out["ancestor_bits"][b, :cut] = pack_bits_ref(ancestor_mask_ref(tree.parents[:cut]), words)
        last_child: dict[int, int] = {}
        for i in range(cut):
            parent = tree.parents[i]
            if parent in last_child:
                out["next_sibling"][b, last_child[parent]] = i
            else:
                out["first_child"][b, parent + 1] = i
            last_child[parent] = i
    return out


def pack_bits_ref(mask: torch.Tensor, words: int) -> torch.Tensor:
    """Pack a (n, n) bool mask into (n, words) int32: bit ``j % 32`` of word ``j // 32`` = ``mask[:, j]``.

    Each word is the sum of ``2**bit`` over its set bits, reinterpreted as a signed 32-bit int.
    """
    n = mask.shape[0]
    padded = torch.zeros((n, words * 32), dtype=torch.int64)
    padded[:, :n] = mask
    unsigned = (padded.view(n, words, 32) * (1 << torch.arange(32, dtype=torch.int64))).sum(-1)
    return torch.where(unsigned >= 1 << 31, unsigned - (1 << 32), unsigned).to(torch.int32)


def ancestor_mask_ref(parents: list[int]) -> torch.Tensor:
    """Dense (n, n) bool: ``mask[i, j]`` iff node ``j`` is ``i`` or an ancestor of ``i``."""
    n = len(parents)
    mask = torch.zeros((n, n), dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


def verify_greedy_ref(
    tokens: torch.Tensor, parents: torch.Tensor, n_nodes: torch.Tensor, target_argmax: torch.Tensor, positions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The acceptance walk of method.md step 4, from parent pointers alone.

    tokens: (B, N) int64; parents: (B, N) int32; n_nodes: (B,) int32;
    target_argmax: (B, N + 1) int64 in verify indexing (0 = root, i + 1 = node i).
    Returns accepted_nodes (B, positions) int32 (-1 after the path), accept_len (B,) int32,
    bonus (B,) int64.
    """
    batch = tokens.shape[0]
    accepted = torch.full((batch, positions), -1, dtype=torch.int32)
    accept_len = torch.zeros((batch,), dtype=torch.int32)
    bonus = torch.zeros((batch,), dtype=torch.int64)
    for b in range(batch):
        n = int(n_nodes[b])
        cur = -1
        steps = 0
        while True:
            want = int(target_argmax[b, cur + 1])
            # Children of cur in pop order: the first whose token matches.
            nxt = next((i for i in range(n) if int(parents[b, i]) == cur and int(tokens[b, i]) == want), None)
            if nxt is None or steps >= positions:
                bonus[b] = want
                break
            accepted[b, steps] = nxt
            steps += 1
            cur = nxt
        accept_len[b] = steps
    return accepted, accept_len, bonus


def sample_tokens_ref(target_probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF samples: the smallest v with cumsum(p)[v] > u (docs/ops.md, verify_sample).

    target_probs: (B, M, V) fp32, rows summing to 1; uniforms: (B, M) fp32 in [0, 1).
    Returns (B, M) int64.
    """
    batch, rows, vocab = target_probs.shape
    out = torch.zeros((batch, rows), dtype=torch.int64)
    for b in range(batch):
        for j in range(rows):
            p = target_probs[b, j].float()
            cdf = torch.cumsum(p, 0)
            above = (cdf > uniforms[b, j]).nonzero()
            last_positive = int((p > 0).nonzero().max())
            v = int(above[0]) if len(above) else last_positive
            out[b, j] = min(v, last_positive)
    return out


def verify_sample_ref(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    n_nodes: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    positions: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lossless sample-and-match walk: sample every verify token, then walk as greedy."""
    samples = sample_tokens_ref(target_probs, uniforms)
    return verify_greedy_ref(tokens, parents, n_nodes, samples, positions)


def tree_verify_mask_ref(ancestor_bits: torch.Tensor, cache_len: int, kv_len: int | None = None) -> torch.Tensor:
    """Dense verify mask of one request: (N + 1, kv_len) bool, True = may attend.

    ancestor_bits: (N, ceil(N / 32)) int32 of one request. Keys ``0 .. cache_len - 1`` are the
    cache (all visible), keys ``cache_len + t`` the verify tokens (``t = 0`` the root, visible
    to all; ``t = j + 1`` node ``j``, visible to node ``i`` iff bit ``j`` of row ``i`` is set).
    Keys past ``cache_len + N`` (``kv_len`` defaults to ``cache_len + N + 1``) are hidden.
    """
    n = ancestor_bits.shape[0]
    kv_len = cache_len + n + 1 if kv_len is None else kv_len
    columns = torch.arange(n)
    words = ancestor_bits.to(torch.int64)[:, columns // 32]  # (N, N): the word holding bit j
    ancestors = ((words >> (columns % 32)) & 1).bool()
    mask = torch.zeros((n + 1, kv_len), dtype=torch.bool)
    mask[:, :cache_len] = True
    mask[:, cache_len] = True
    mask[1:, cache_len + 1 : cache_len + n + 1] = ancestors
    return mask


def tree_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_tree: torch.Tensor | None,
    v_tree: torch.Tensor | None,
    ancestor_bits: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reference ``tree_attention``: SDPA with the dense boolean mask, one request at a time.

    Same arguments as ``bastion_ext.attention.tree_attention`` (``k_tree = v_tree = None``:
    the verify tokens' keys sit in the cache at ``cache_lens[b]``). ``compute_dtype`` is the
    dtype SDPA runs in: fp32 for the oracle, the inputs' own dtype to measure what PyTorch
    itself achieves at that precision.

    Returns (B, H_q, N + 1, D) in ``compute_dtype``.
    """
    batch, n_q_heads, n_verify, _ = q.shape
    group = n_q_heads // k_cache.shape[1]
    outs = []
    for b in range(batch):
        cache_len = int(cache_lens[b])
        if k_tree is None:
            keys = k_cache[b, :, : cache_len + n_verify]
            values = v_cache[b, :, : cache_len + n_verify]
        else:
            keys = torch.cat([k_cache[b, :, :cache_len], k_tree[b]], dim=1)
            values = torch.cat([v_cache[b, :, :cache_len], v_tree[b]], dim=1)
        mask = tree_verify_mask_ref(ancestor_bits[b].cpu(), cache_len).to(q.device)
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[b].to(compute_dtype),
                keys.to(compute_dtype).repeat_interleave(group, dim=0),
                values.to(compute_dtype).repeat_interleave(group, dim=0),
                attn_mask=mask,
                scale=scale,
            )
        )
    return torch.stack(outs)


def ancestor_bits_ref(parents: torch.Tensor) -> torch.Tensor:
    """Pack ``ancestor_bits`` from parent arrays, as ``build_tree`` lays them out.

    parents: (B, N) integer, -1 = child of the root or padding; a node's parent precedes it.
    Returns (B, N, ceil(N / 32)) int32: bit ``j % 32`` of word ``j // 32`` of row ``i`` set iff
    ``j == i`` or ``j`` is an ancestor of ``i``; rows of padding nodes (``parents[b, i] == -1``
    past the cut) are the caller's to zero.
    """
    batch, n = parents.shape
    parents = parents.to(torch.int64)
    mask = torch.eye(n, dtype=torch.bool).expand(batch, n, n).clone()
    rows = torch.arange(n).expand(batch, n)
    cur = parents.clone()
    while bool((cur >= 0).any()):
        live = cur >= 0
        mask[torch.arange(batch)[:, None].expand(batch, n)[live], rows[live], cur[live]] = True
        cur = torch.where(live, parents.gather(1, cur.clamp(min=0)), cur)
    words = (n + 31) // 32
    padded = torch.zeros((batch, n, words * 32), dtype=torch.int64)
    padded[:, :, :n] = mask.to(torch.int64)
    weights = torch.tensor([1 << s for s in range(32)], dtype=torch.int64)
    packed = (padded.view(batch, n, words, 32) * weights).sum(-1)
    return torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)


def compact_kv_ref(cache: torch.Tensor, cache_lens: torch.Tensor, accepted_nodes: torch.Tensor, accept_len: torch.Tensor) -> torch.Tensor:
    """The cache after ``compact_kv`` (docs/ops.md), entry by entry, as a new tensor.

    cache: (G, B, H, L, D) float; cache_lens: (B,) int64; accepted_nodes: (B, P) int32;
    accept_len: (B,) int32. Returns (G, B, H, L, D), the input left unchanged.
    """
    out = cache.clone()
    for b in range(cache.shape[1]):
        start = int(cache_lens[b]) + 1
        for j in range(int(accept_len[b])):
            out[:, b, :, start + j] = out[:, b, :, start + int(accepted_nodes[b, j])]
    return out
