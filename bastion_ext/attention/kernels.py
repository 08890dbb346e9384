"""The Triton kernels of tree attention (layout of the work: ``bastion_ext.attention``).

``tree_attention_kernel`` attends the packed query rows of one row tile, one cache split and
one (request, KV head) to its cache chunk and, in the last split, to the tree; with splits on,
``tree_attention_combine_kernel`` merges the splits' partial outputs by their log-sum-exp.
Launched only by ``bastion_ext.attention.op`` with the tiles a plan chose.
"""

import triton
import triton.language as tl


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
def tree_attention_kernel(
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
def tree_attention_combine_kernel(
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
