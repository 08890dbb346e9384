"""Tree attention for the verify forward: a Triton kernel and its wrapper.

The verify forward runs the root and the ``N`` tree nodes (``M = N + 1`` tokens) through the
target. Each of them sees the request's committed KV cache; among the tree tokens, the root
sees itself only and node ``i`` (verify index ``i + 1``) sees the root, its ancestors and
itself, as the packed ``ancestor_bits`` of ``build_tree`` say (docs/ops.md). No dense mask is
ever materialised: the kernel reads the bit words of the tile it is working on.

Layout of the work. The ``G = H_q / H_kv`` query heads that share a KV head are packed into
the rows of one tile (row ``r`` is verify token ``r // G`` of query head ``kv_head * G + r % G``),
so every K/V tile is read once per KV head and not once per query head. When that leaves too
few programs to fill the GPU (small trees, long caches), the cache is split into chunks that
run in parallel and write partial results (flash-decoding); a second kernel merges them by
their log-sum-exp. The program of the last split starts its softmax from the root's key (every
verify token sees it) and, after its cache chunk, attends to the node keys 64 at a time: the
bits of such a tile are two words per row, a tile without an ancestor of any of its rows is
skipped, and no node past the tile's last verify token is read, since ancestors come before
their descendants in pop order.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

LOG2E = 1.4426950408889634
# Fewer cache keys per split than this and the partial writes and pipeline warm-up cost more
# than the parallelism buys (H200, N = 16, L = 16384, B = 1: 16 splits 0.052 ms, 32 splits 0.088).
_MIN_SPLIT_KEYS = 1024
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _softmax_step(acc, m_i, l_i, qk, v, INPUT_PRECISION: tl.constexpr):
    """Fold one tile of base-2 logits ``qk`` [BLOCK_M, BLOCK_N] (``-inf`` = masked) and its
    values ``v`` [BLOCK_N, BLOCK_D] into the running max, sum and accumulator."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row that has seen only masked keys keeps m = -inf; exp2(-inf - 0) = 0 keeps it empty
    # instead of producing NaN from -inf - -inf.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _cache_tile(
    acc, m_i, l_i, q, kc_base, vc_base, stride_kcn, stride_vcn, n0, end, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    PARTIAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Attend to cache keys ``n0 .. n0 + BLOCK_N - 1`` (those before ``end`` if ``PARTIAL``)."""
    n = n0 + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    k_ptrs = kc_base + n[:, None] * stride_kcn + d[None, :]
    v_ptrs = vc_base + n[:, None] * stride_vcn + d[None, :]
    if PARTIAL or HEAD_DIM != BLOCK_D:
        kv_mask = (n < end)[:, None] & (d < HEAD_DIM)[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
    if PARTIAL:
        qk = tl.where((n < end)[None, :], qk, float("-inf"))
    return _softmax_step(acc, m_i, l_i, qk, v, INPUT_PRECISION)


@triton.jit
def _node_tile(
    acc, m_i, l_i, q, kt_base, vt_base, stride_ktn, stride_vtn, j0, node_end, w0, w1, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Attend to tree nodes ``j0 .. j0 + BLOCK_N - 1`` (those before ``node_end``; key ``j + 1``
    of the tree segment is node ``j``): node ``j0 + c`` is visible to a row iff bit ``c`` of its
    words ``w0``, ``w1`` [BLOCK_M] (the row's ancestor bits from node ``j0`` on) is set."""
    col = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    j = j0 + col
    j_ok = j < node_end
    word = tl.where(col[None, :] < 32, w0[:, None], w1[:, None])
    visible = (((word >> (col % 32)[None, :]) & 1) != 0) & j_ok[None, :]
    kv_mask = j_ok[:, None] & (d < HEAD_DIM)[None, :]
    k = tl.load(kt_base + (j + 1)[:, None] * stride_ktn + d[None, :], mask=kv_mask, other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
    qk = tl.where(visible, qk, float("-inf"))
    v = tl.load(vt_base + (j + 1)[:, None] * stride_vtn + d[None, :], mask=kv_mask, other=0.0)
    return _softmax_step(acc, m_i, l_i, qk, v, INPUT_PRECISION)


@triton.jit
def _tree_attention_kernel(
    Q, K_cache, V_cache, K_tree, V_tree, Bits, CacheLens, Out, PartO, PartLse,
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2
    n_kv_heads, n_verify, n_words, chunk_len, num_splits,
    stride_qb, stride_qh, stride_qm,
    stride_kcb, stride_kch, stride_kcn,
    stride_vcb, stride_vch, stride_vcn,
    stride_ktb, stride_kth, stride_ktn,
    stride_vtb, stride_vth, stride_vtn,
    stride_bb, stride_bn,
    stride_ob, stride_oh, stride_om,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, TREE_IN_CACHE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # A node tile's bits are the two words at (j0 // 32, j0 // 32 + 1) of each row.
    tl.static_assert(BLOCK_N <= 64)
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // n_kv_heads
    kv_head = pid_bh % n_kv_heads
    is_last_split = pid_s == num_splits - 1

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    verify_idx = rows // GROUP
    q_head = kv_head * GROUP + rows % GROUP
    row_ok = verify_idx < n_verify
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    q = tl.load(
        Q + b * stride_qb + q_head[:, None] * stride_qh + verify_idx[:, None] * stride_qm + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :], other=0.0,
    )
    cache_len = tl.load(CacheLens + b).to(tl.int32)
    tree_start = cache_len * TREE_IN_CACHE  # the HF layout: verify tokens follow the cache
    kt_base = K_tree + b * stride_ktb + kv_head * stride_kth + tree_start * stride_ktn
    vt_base = V_tree + b * stride_vtb + kv_head * stride_vth + tree_start * stride_vtn

    # Every verify token sees the root: the last split starts its softmax from the root's key,
    # so the tree loop below only deals with nodes and whole 32-bit words.
    k_root = tl.load(kt_base + d, mask=d_ok, other=0.0).to(tl.float32)
    v_root = tl.load(vt_base + d, mask=d_ok, other=0.0).to(tl.float32)
    root_logit = tl.sum(q.to(tl.float32) * k_root[None, :], 1) * qk_scale
    m_i = tl.where(is_last_split, root_logit, float("-inf"))
    l_i = tl.where(is_last_split, 1.0, 0.0) + tl.zeros([BLOCK_M], tl.float32)
    acc = tl.where(is_last_split, 1.0, 0.0) * v_root[None, :] + tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    kc_base = K_cache + b * stride_kcb + kv_head * stride_kch
    vc_base = V_cache + b * stride_vcb + kv_head * stride_vch
    start = pid_s * chunk_len
    end = tl.minimum(start + chunk_len, cache_len)
    # Whole tiles need no key mask; only the chunk's last, partial tile does.
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N
    for n0 in range(start, full_end, BLOCK_N):
        acc, m_i, l_i = _cache_tile(
            acc, m_i, l_i, q, kc_base, vc_base, stride_kcn, stride_vcn, n0, end, qk_scale,
            HEAD_DIM, BLOCK_D, BLOCK_N, False, INPUT_PRECISION,
        )
    if full_end < end:
        acc, m_i, l_i = _cache_tile(
            acc, m_i, l_i, q, kc_base, vc_base, stride_kcn, stride_vcn, full_end, end, qk_scale,
            HEAD_DIM, BLOCK_D, BLOCK_N, True, INPUT_PRECISION,
        )

    if is_last_split:
        # Node j (key j + 1 of the tree segment) is visible to node i iff bit j of row i is set.
        # Ancestors precede their descendants, so nodes from the tile's last query on never are.
        node_end = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // GROUP, n_verify - 1)
        is_node_row = (verify_idx > 0) & row_ok
        bits_row = Bits + b * stride_bb + tl.maximum(verify_idx - 1, 0) * stride_bn
        for j0 in range(0, node_end, BLOCK_N):
            word_idx = j0 // 32
            w0 = tl.load(bits_row + word_idx, mask=is_node_row, other=0)
            has_w1 = tl.full([BLOCK_M], word_idx + 1, tl.int32) < n_words
            w1 = tl.load(bits_row + word_idx + 1, mask=is_node_row & has_w1, other=0)
            # Most tiles of a large tree hold no ancestor of any row of this tile: skip them.
            if tl.max(((w0 | w1) != 0).to(tl.int32), 0) != 0:
                acc, m_i, l_i = _node_tile(
                    acc, m_i, l_i, q, kt_base, vt_base, stride_ktn, stride_vtn, j0, node_end, w0, w1, qk_scale,
                    HEAD_DIM, BLOCK_D, BLOCK_N, INPUT_PRECISION,
                )

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if SPLIT:
        n_rows = n_verify * GROUP
        part = (pid_s * tl.num_programs(2) + pid_bh) * n_rows + rows
        row_in = rows < n_rows
        tl.store(PartO + part[:, None] * HEAD_DIM + d[None, :], o, mask=row_in[:, None] & d_ok[None, :])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(PartLse + part, lse, mask=row_in)
    else:
        tl.store(
            Out + b * stride_ob + q_head[:, None] * stride_oh + verify_idx[:, None] * stride_om + d[None, :],
            o.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :],
        )


@triton.jit
def _tree_attention_combine_kernel(
    PartO, PartLse, Out,
    n_kv_heads, n_verify, num_splits,
    stride_ob, stride_oh, stride_om,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Merge the per-split partial outputs (normalised) by their base-2 log-sum-exp."""
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_kv_heads
    kv_head = pid_bh % n_kv_heads
    n_rows = n_verify * GROUP
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    d = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (d < HEAD_DIM)[None, :]

    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for s in range(num_splits):
        part = (s * tl.num_programs(1) + pid_bh) * n_rows + rows
        lse = tl.load(PartLse + part, mask=row_ok, other=float("-inf"))
        o = tl.load(PartO + part[:, None] * HEAD_DIM + d[None, :], mask=mask, other=0.0)
        m_new = tl.maximum(m_i, lse)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        w = tl.math.exp2(lse - m_safe)
        acc = acc * alpha[:, None] + w[:, None] * o
        l_i = l_i * alpha + w
        m_i = m_new

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    verify_idx = rows // GROUP
    q_head = kv_head * GROUP + rows % GROUP
    tl.store(
        Out + b * stride_ob + q_head[:, None] * stride_oh + verify_idx[:, None] * stride_om + d[None, :],
        o.to(Out.dtype.element_ty), mask=mask,
    )


def _pick_blocks(n_rows: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for ``n_rows`` packed query rows.

    128 x 64 tiles, 8 warps, 3 stages were the fastest of the configurations swept on an H200
    at D = 128 (bench/results/tree_attention_sweep_NVIDIA_H200.json), or within 3% of it;
    trees with at most 64 rows take 64-row tiles so as not to compute empty rows.
    """
    if n_rows <= 64:
        return 64, 64, 4, 3
    return 128, 64, 8, 3


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _pick_num_splits(programs: int, cache_capacity: int, device: torch.device) -> int:
    if device.type != "cuda" or cache_capacity <= _MIN_SPLIT_KEYS:
        return 1
    sm_count = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    wanted = triton.cdiv(2 * sm_count, programs)
    return max(1, min(wanted, cache_capacity // _MIN_SPLIT_KEYS))


def _check_4d(name: str, t: torch.Tensor, batch: int, heads: int | None, head_dim: int, meaning: str) -> None:
    if t.dim() != 4 or t.shape[0] != batch or (heads is not None and t.shape[1] != heads) or t.shape[3] != head_dim:
        raise ValueError(f"{name} must be 4-D {meaning}, got shape {tuple(t.shape)}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last (head_dim) dimension, got strides {t.stride()}")


def _check_tree_attention_args(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, num_splits) -> None:
    """Raise ValueError, naming the argument, unless ``tree_attention`` can run on these."""
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D [batch, q_heads, verify_tokens, head_dim], got shape {tuple(q.shape)}")
    batch, n_q_heads, n_verify, head_dim = q.shape
    if q.device.type != "cuda" and isinstance(_tree_attention_kernel, JITFunction):
        raise ValueError(
            f"q is on {q.device}: tree_attention runs on CUDA tensors, or on CPU tensors through the "
            "Triton interpreter (TRITON_INTERPRET=1 set before bastion_ext.attention is imported)"
        )
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q must be fp16, bf16 or fp32, got {q.dtype}")
    if head_dim not in (64, 96, 128):
        raise ValueError(f"q's head_dim must be 64, 96 or 128, got {head_dim}")
    _check_4d("q", q, batch, None, head_dim, "[batch, q_heads, verify_tokens, head_dim]")
    _check_4d("k_cache", k_cache, batch, None, head_dim, "[batch, kv_heads, cache_len, head_dim]")
    n_kv_heads = k_cache.shape[1]
    if n_q_heads % n_kv_heads != 0:
        raise ValueError(f"q's heads ({n_q_heads}) must be a multiple of k_cache's heads ({n_kv_heads})")
    _check_4d("v_cache", v_cache, batch, n_kv_heads, head_dim, "[batch, kv_heads, cache_len, head_dim]")
    if v_cache.shape[2] != k_cache.shape[2]:
        raise ValueError(f"v_cache must have the shape of k_cache {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    if (k_tree is None) != (v_tree is None):
        raise ValueError("k_tree and v_tree must both be given or both be None")
    if k_tree is None:
        if k_cache.shape[2] < n_verify:
            raise ValueError(
                f"k_cache must hold the {n_verify} verify tokens after the cache, got length {k_cache.shape[2]}"
            )
        k_tree, v_tree = k_cache, v_cache
    else:
        meaning = "[batch, kv_heads, verify_tokens, head_dim]"
        _check_4d("k_tree", k_tree, batch, n_kv_heads, head_dim, meaning)
        _check_4d("v_tree", v_tree, batch, n_kv_heads, head_dim, meaning)
        if k_tree.shape[2] != n_verify or v_tree.shape[2] != n_verify:
            raise ValueError(f"k_tree and v_tree must hold {n_verify} verify tokens, got {k_tree.shape}, {v_tree.shape}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k_tree", k_tree), ("v_tree", v_tree)):
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must be {q.dtype} on {q.device} like q, got {t.dtype} on {t.device}")
    n_nodes = n_verify - 1
    if n_nodes < 1:
        raise ValueError(f"q must hold the root and at least one tree node, got {n_verify} verify tokens")
    n_words = triton.cdiv(n_nodes, 32)
    if ancestor_bits.dtype != torch.int32 or tuple(ancestor_bits.shape) != (batch, n_nodes, n_words):
        raise ValueError(
            f"ancestor_bits must be int32 [batch, nodes, words] = {(batch, n_nodes, n_words)}, "
            f"got {ancestor_bits.dtype} {tuple(ancestor_bits.shape)}"
        )
    if ancestor_bits.device != q.device or ancestor_bits.stride(-1) != 1:
        raise ValueError(f"ancestor_bits must be on {q.device} with contiguous words, got {ancestor_bits.device}")
    if cache_lens.shape != (batch,) or cache_lens.dtype not in (torch.int32, torch.int64) or cache_lens.device != q.device:
        raise ValueError(
            f"cache_lens must be int32/int64 [batch] = ({batch},) on {q.device}, "
            f"got {cache_lens.dtype} {tuple(cache_lens.shape)} on {cache_lens.device}"
        )
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1):
        raise ValueError(f"out must be {q.dtype} {tuple(q.shape)} on {q.device} with a contiguous last dim")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")


class _LaunchConfig(NamedTuple):
    """How a ``tree_attention`` call is laid out on the GPU (see the module docstring)."""

    group: int  # query heads per KV head, packed into the rows of a tile
    n_rows: int  # packed query rows per (request, KV head): group * (N + 1)
    block_m: int
    block_n: int
    block_d: int  # head_dim rounded up to a power of two
    num_warps: int
    num_stages: int
    num_splits: int  # cache chunks run in parallel; 1: no partials, no combine
    chunk_len: int  # cache keys per split, whole BLOCK_N tiles
    grid: tuple[int, int, int]  # (row tiles, splits, batch * KV heads)


def _launch_config(q: torch.Tensor, k_cache: torch.Tensor, tree_in_cache: bool, num_splits: int | None) -> _LaunchConfig:
    """Tiles, warps and cache splits of a call on checked arguments; ``num_splits`` None picks one."""
    batch, n_q_heads, n_verify, head_dim = q.shape
    n_kv_heads = k_cache.shape[1]
    cache_capacity = k_cache.shape[2] - (n_verify if tree_in_cache else 0)
    group = n_q_heads // n_kv_heads
    n_rows = group * n_verify
    block_m, block_n, num_warps, num_stages = _pick_blocks(n_rows)
    m_blocks = triton.cdiv(n_rows, block_m)
    if num_splits is None:
        num_splits = _pick_num_splits(m_blocks * batch * n_kv_heads, cache_capacity, q.device)
    # Chunks are whole tiles; recount the splits so that none is empty by construction.
    chunk_len = block_n * max(1, triton.cdiv(triton.cdiv(max(cache_capacity, 1), num_splits), block_n))
    num_splits = max(1, triton.cdiv(cache_capacity, chunk_len))
    return _LaunchConfig(
        group, n_rows, block_m, block_n, triton.next_power_of_2(head_dim), num_warps, num_stages,
        num_splits, chunk_len, (m_blocks, num_splits, batch * n_kv_heads),
    )


def _launch_tree_attention(
    q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, scale: float, tree_in_cache: bool,
    config: _LaunchConfig,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Run ``_tree_attention_kernel``: into ``out`` if the cache is not split, else into the
    returned per-split partial outputs (num_splits, B * H_kv, rows, D) fp32 and their base-2
    log-sum-exps (num_splits, B * H_kv, rows) fp32, for ``_launch_combine`` to merge."""
    split = config.num_splits > 1
    if split:
        rows_shape = (config.num_splits, config.grid[2], config.n_rows)
        part_o = torch.empty(rows_shape + (q.shape[3],), dtype=torch.float32, device=q.device)
        part_lse = torch.empty(rows_shape, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out  # unused by the kernel when SPLIT is off
    _tree_attention_kernel[config.grid](
        q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, part_o, part_lse,
        scale * LOG2E,
        k_cache.shape[1], q.shape[2], ancestor_bits.shape[2], config.chunk_len, config.num_splits,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        k_tree.stride(0), k_tree.stride(1), k_tree.stride(2),
        v_tree.stride(0), v_tree.stride(1), v_tree.stride(2),
        ancestor_bits.stride(0), ancestor_bits.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        GROUP=config.group, HEAD_DIM=q.shape[3], BLOCK_D=config.block_d, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, SPLIT=split, TREE_IN_CACHE=tree_in_cache,
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return (part_o, part_lse) if split else None


def _launch_combine(part_o: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor, config: _LaunchConfig) -> None:
    """Merge the splits' partial outputs into ``out`` (B, H_q, N + 1, D)."""
    block_r = 32
    n_kv_heads = out.shape[1] // config.group
    _tree_attention_combine_kernel[(triton.cdiv(config.n_rows, block_r), config.grid[2])](
        part_o, part_lse, out,
        n_kv_heads, out.shape[2], config.num_splits,
        out.stride(0), out.stride(1), out.stride(2),
        GROUP=config.group, HEAD_DIM=out.shape[3], BLOCK_D=config.block_d, BLOCK_R=block_r,
        num_warps=4,
    )


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_tree: torch.Tensor | None,
    v_tree: torch.Tensor | None,
    ancestor_bits: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention of the verify tokens over the KV cache and their tree ancestors.

    Parameters
    ----------
    q : (B, H_q, N + 1, D) fp16 / bf16 / fp32
        Queries of the verify tokens: index 0 the root, ``i + 1`` tree node ``i``. Any strides
        with a contiguous last dimension (a transposed ``(B, N + 1, H_q, D)`` tensor is fine).
    k_cache, v_cache : (B, H_kv, L, D), same dtype as ``q``
        Keys / values of the committed context; the first ``cache_lens[b]`` rows of request
        ``b`` are valid. ``H_q`` must be a multiple of ``H_kv`` (grouped-query attention).
        If ``k_tree`` and ``v_tree`` are None, these also hold the verify tokens' keys / values
        at rows ``cache_lens[b] .. cache_lens[b] + N`` (the layout of a Hugging Face cache
        after its update), so ``L >= max(cache_lens) + N + 1``.
    k_tree, v_tree : (B, H_kv, N + 1, D) or None
        Keys / values of the verify tokens, in verify order.
    ancestor_bits : (B, N, ceil(N / 32)) int32
        Bit ``j % 32`` of word ``j // 32`` of row ``i`` set iff node ``j`` is ``i`` or an
        ancestor of ``i`` (``build_tree``'s output; padding rows are 0).
    cache_lens : (B,) int32 / int64, on the device of ``q``
        Valid cache length of each request, ``0 <= cache_lens[b] <= L`` (not checked on the
        device: no host sync).
    scale : float, optional
        Softmax scale, ``1 / sqrt(D)`` by default.
    out : (B, H_q, N + 1, D), dtype of ``q``, optional
        Written in place and returned; any strides with a contiguous last dimension.
    num_splits : int, optional
        Number of chunks the cache is split into (flash-decoding); by default chosen from the
        multiprocessor count so that small trees still fill the GPU.

    Returns
    -------
    (B, H_q, N + 1, D), dtype of ``q``: ``out`` if given.
    """
    _check_tree_attention_args(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, num_splits)
    tree_in_cache = k_tree is None
    if tree_in_cache:
        k_tree, v_tree = k_cache, v_cache
    config = _launch_config(q, k_cache, tree_in_cache, num_splits)
    if out is None:
        out = torch.empty_like(q)
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    partials = _launch_tree_attention(
        q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, scale, tree_in_cache, config
    )
    if partials is not None:
        _launch_combine(*partials, out, config)
    return out
