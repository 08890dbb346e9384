"""Slow, obviously correct versions of every op: the test oracles.

Plain Python and PyTorch, one request at a time, written to mirror ``docs/ops.md`` line by
line rather than to be fast. Each ``<op>_ref`` takes the op's arguments by the op's names and
returns the op's type (``DraftTree``, ``VerifyResult``); the steps inside carry the names the
CPU and CUDA code give them (``topk_logprobs``, ``expand_lattice``, ``cut_pop_sequence``,
``write_outputs``; ``sample_inverse_cdf``, ``walk_tree``). The compiled ops must match these
exactly (trees bit for bit, log-scores to 1e-5 on CUDA).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from bastion_ext.tree import DraftTree, VerifyResult

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


def expand_lattice_ref(cand_tokens: list[list[int]], cand_logq: list[list[float]], cap: int) -> TreeRef:
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


def cut_pop_sequence_ref(scores: list[float], policy: str, latency: list[float] | None, accept_scale: float) -> int:
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


def _per_request(value, batch: int, default) -> list:
    """A per-request argument (tensor or sequence; one entry broadcasts) as ``batch`` Python values."""
    values = [default] if value is None else (value.tolist() if isinstance(value, torch.Tensor) else list(value))
    return values * batch if len(values) == 1 else values


def build_tree_ref(
    draft_logits: torch.Tensor,
    k: int,
    max_nodes: int,
    *,
    policy: str = "fixed",
    budgets: torch.Tensor | list[int] | None = None,
    latency_table: torch.Tensor | None = None,
    accept_scale: torch.Tensor | list[float] | None = None,
    context_lens: torch.Tensor | list[int] | None = None,
) -> DraftTree:
    """Reference ``build_tree``: the arguments and the result of ``bastion_ext.ops.build_tree``.

    draft_logits: (B, P, V) float. latency_table: (B or 1, max_nodes) fp32; accept_scale:
    (B or 1,). Returns the trees on the CPU, every element written.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    batch, positions, _ = draft_logits.shape
    budgets = _per_request(budgets, batch, max_nodes)
    accept_scale = _per_request(accept_scale, batch, 1.0)
    context_lens = _per_request(context_lens, batch, 0)
    latency_rows = None if latency_table is None else _per_request(latency_table.float(), batch, None)
    out = DraftTree.empty(batch, max_nodes, positions)
    for b in range(batch):
        cands = [topk_logprobs_ref(draft_logits[b, p], k) for p in range(positions)]
        tree = expand_lattice_ref([c[0] for c in cands], [c[1] for c in cands], budgets[b])
        latency = None if policy == "fixed" else latency_rows[b]
        cut = cut_pop_sequence_ref(tree.scores, policy, latency, accept_scale[b])
        write_outputs_ref(out, b, tree, cut, context_lens[b])
    return out


def write_outputs_ref(out: DraftTree, b: int, tree: TreeRef, cut: int, context_len: int) -> None:
    """Request ``b``'s rows of ``out``: the first ``cut`` pops, padding after them, the links
    (first child / next sibling in pop order) and the packed ancestor rows (docs/ops.md, step 4)."""
    max_nodes = out.max_nodes
    pad = max_nodes - cut
    out.n_nodes[b] = cut
    out.tokens[b] = torch.tensor(tree.tokens[:cut] + [-1] * pad, dtype=torch.int64)
    out.parents[b] = torch.tensor(tree.parents[:cut] + [-1] * pad, dtype=torch.int32)
    out.depth[b] = torch.tensor(tree.depth[:cut] + [0] * pad, dtype=torch.int32)
    out.positions[b] = torch.tensor([context_len + d for d in tree.depth[:cut]] + [-1] * pad, dtype=torch.int64)
    out.scores[b] = torch.tensor(tree.scores[:cut] + [-math.inf] * pad, dtype=torch.float32)
    words = (max_nodes + 31) // 32
    out.ancestor_bits[b] = 0
    out.ancestor_bits[b, :cut] = pack_bits_ref(ancestor_mask_ref(tree.parents[:cut]), words)
    out.first_child[b] = -1
    out.next_sibling[b] = -1
    last_child: dict[int, int] = {}
    for i in range(cut):
        parent = tree.parents[i]
        if parent in last_child:
            out.next_sibling[b, last_child[parent]] = i
        else:
            out.first_child[b, parent + 1] = i
        last_child[parent] = i


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


def walk_tree_ref(parents: list[int], tokens: list[int], target_of, positions: int) -> tuple[list[int], int]:
    """The acceptance walk of method.md step 4 over one request's parent pointers.

    ``target_of(j)`` is the target token at verify index j (0 = root, i + 1 = node i). From
    the root, follow the first child in pop order whose token is the target's, at most
    ``positions`` steps. Returns the accepted nodes and the bonus token.
    """
    path, cur = [], -1
    while True:
        want = target_of(cur + 1)
        nxt = next((i for i in range(len(tokens)) if parents[i] == cur and tokens[i] == want), None)
        if nxt is None or len(path) >= positions:
            return path, want
        path.append(nxt)
        cur = nxt


def _walk_all_ref(tree: DraftTree, target_of) -> VerifyResult:
    """``walk_tree_ref`` for every request; ``target_of(b, j)`` is request b's target at j."""
    out = VerifyResult.empty(tree.batch_size, tree.draft_positions)
    out.accepted_nodes.fill_(-1)
    for b in range(tree.batch_size):
        n = int(tree.n_nodes[b])
        path, bonus = walk_tree_ref(tree.parents[b, :n].tolist(), tree.tokens[b, :n].tolist(),
                                    lambda j: target_of(b, j), tree.draft_positions)  # fmt: skip
        out.accepted_nodes[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        out.accept_len[b] = len(path)
        out.bonus[b] = bonus
    return out


def verify_greedy_ref(tree: DraftTree, target_argmax: torch.Tensor) -> VerifyResult:
    """Reference ``verify_greedy``, from the tree's parent pointers alone (not its links).

    target_argmax: (B, N + 1) int64 in verify indexing (0 = root, i + 1 = node i).
    """
    target = target_argmax.cpu()
    return _walk_all_ref(tree, lambda b, j: int(target[b, j]))


def sample_inverse_cdf_ref(p: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample of one row: the smallest v with cumsum(p)[v] > u, clamped to the
    last token of positive probability (docs/ops.md, verify_sample).

    p: (V,) fp32 summing to 1 with an entry > 0; u: in [0, 1).
    """
    cdf = torch.cumsum(p.float(), 0)
    above = (cdf > u).nonzero()
    last_positive = int((p > 0).nonzero().max())
    return min(int(above[0]) if len(above) else last_positive, last_positive)


def verify_sample_ref(tree: DraftTree, target_probs: torch.Tensor, uniforms: torch.Tensor) -> VerifyResult:
    """Reference ``verify_sample``: the walk of ``verify_greedy`` with each visited verify
    token's target sampled from its row (rows the walk never visits are never read).

    target_probs: (B, N + 1, V) fp32; uniforms: (B, N + 1) fp32 in [0, 1).
    """
    probs, unif = target_probs.cpu(), uniforms.cpu()
    return _walk_all_ref(tree, lambda b, j: sample_inverse_cdf_ref(probs[b, j], float(unif[b, j])))


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


def tree_attention_ref(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, scale=None, compute_dtype=torch.float32) -> torch.Tensor:
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
    words = (parents.shape[1] + 31) // 32
    return torch.stack([pack_bits_ref(ancestor_mask_ref(row.tolist()), words) for row in parents.cpu()])


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


def skinny_linear_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` (docs/ops.md) in float64, output by output: x (M, K), weight (N, K)
    float32. Returns (M, N) float64. Any fp32 sum of the same K products is within
    ``skinny_linear_error_bound`` of it."""
    out = torch.zeros((x.shape[0], weight.shape[0]), dtype=torch.float64)
    for m in range(x.shape[0]):
        for n in range(weight.shape[0]):
            out[m, n] = torch.dot(x[m].double(), weight[n].double())
    return out


def skinny_linear_error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(M, N) float64: the classic bound on an fp32 dot product of K terms summed in any order
    with fused or separate multiply-adds, (K + 1) u / (1 - (K + 1) u) times sum_k |x_mk w_nk|,
    u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1)."""
    u = 2.0**-24
    gamma = (x.shape[1] + 1) * u / (1 - (x.shape[1] + 1) * u)
    return gamma * (x.double().abs() @ weight.double().abs().T)
