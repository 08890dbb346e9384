"""Tree attention as the op ``bastion_ext::tree_attention``, its fake, and its entry points.

The op launches the kernels with the tiles and the workspace a plan chose and writes ``out``
(and, when the cache is split, ``part_o`` / ``part_lse``): its schema marks those three
written. It trusts the plan's checks (``plan_tree_attention``); the fake mirrors the shape
checks that tie the workspace to the launch, for ``torch.compile`` and meta tensors.
"""

import math
from collections.abc import Sequence
from typing import Optional

import torch
import triton

from bastion_ext.attention.kernels import tree_attention_combine_kernel, tree_attention_kernel
from bastion_ext.attention.plan import LaunchConfig, TreeAttentionPlan, plan_tree_attention

LOG2E = 1.4426950408889634
_COMBINE_ROWS = 32  # packed rows per program of the combine kernel


@torch.library.custom_op("bastion_ext::tree_attention", mutates_args=("out", "part_o", "part_lse"))
def _tree_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_tree: Optional[torch.Tensor],
    v_tree: Optional[torch.Tensor],
    ancestor_bits: torch.Tensor,
    cache_lens: torch.Tensor,
    out: torch.Tensor,
    part_o: torch.Tensor,
    part_lse: torch.Tensor,
    scale: float,
    launch: Sequence[int],
) -> None:
    """``launch``: a ``LaunchConfig`` as a list; other arguments as in ``TreeAttentionPlan``
    and ``tree_attention``."""
    config = LaunchConfig(*launch)
    tree_in_cache = k_tree is None
    if tree_in_cache:
        k_tree, v_tree = k_cache, v_cache
    batch, n_q_heads, n_verify, head_dim = q.shape
    n_kv_heads = k_cache.shape[1]
    group = n_q_heads // n_kv_heads
    n_rows = group * n_verify
    block_d = triton.next_power_of_2(head_dim)
    split = config.num_splits > 1
    if not split:
        part_o = part_lse = out  # not read by the kernel without SPLIT; any valid pointer
    tree_attention_kernel[(triton.cdiv(n_rows, config.block_m), config.num_splits, batch * n_kv_heads)](
        q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, part_o, part_lse,
        scale * LOG2E,
        n_kv_heads, n_verify, ancestor_bits.shape[2], config.chunk_len, config.num_splits,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        k_tree.stride(0), k_tree.stride(1), k_tree.stride(2),
        v_tree.stride(0), v_tree.stride(1), v_tree.stride(2),
        ancestor_bits.stride(0), ancestor_bits.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, SPLIT=split, TREE_IN_CACHE=tree_in_cache,
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split:
        tree_attention_combine_kernel[(triton.cdiv(n_rows, _COMBINE_ROWS), batch * n_kv_heads)](
            part_o, part_lse, out,
            n_kv_heads, n_verify, config.num_splits,
            out.stride(0), out.stride(1), out.stride(2),
            GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_R=_COMBINE_ROWS,
            num_warps=4,
        )


@_tree_attention_op.register_fake
def _tree_attention_fake(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, part_o, part_lse, scale, launch):
    torch._check_value(len(launch) == len(LaunchConfig._fields), lambda: f"launch must hold {LaunchConfig._fields}, got {list(launch)}")
    config = LaunchConfig(*launch)
    torch._check_value(q.dim() == 4 and k_cache.dim() == 4, lambda: f"q and k_cache must be 4-D, got shapes {tuple(q.shape)}, {tuple(k_cache.shape)}")
    batch, n_q_heads, n_verify, head_dim = q.shape
    n_kv_heads = k_cache.shape[1]
    torch._check_value(
        out.shape == q.shape and out.dtype == q.dtype and out.device == q.device,
        lambda: f"out must be {q.dtype} {tuple(q.shape)} on {q.device}, got {out.dtype} {tuple(out.shape)} on {out.device}",
    )
    if config.num_splits > 1:
        rows_shape = (config.num_splits, batch * n_kv_heads, n_q_heads // n_kv_heads * n_verify)
        for name, t, shape in (("part_o", part_o, rows_shape + (head_dim,)), ("part_lse", part_lse, rows_shape)):
            torch._check_value(
                tuple(t.shape) == shape and t.dtype == torch.float32 and t.is_contiguous(),
                lambda: f"{name} must be a contiguous float32 tensor of shape {shape} for {config.num_splits} splits, got {t.dtype} {tuple(t.shape)}",
            )


def run_tree_attention(
    plan: TreeAttentionPlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_tree: torch.Tensor | None = None,
    v_tree: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """One layer's tree attention on a round's plan: no checks beyond ``plan.fits``, no allocation.

    Parameters
    ----------
    plan : TreeAttentionPlan
        From ``plan_tree_attention`` (the round's tree, cache lengths and workspace).
    q, k_cache, v_cache, k_tree, v_tree
        This layer's, as in ``tree_attention``, with the shapes, dtype and device planned.
    scale : float, optional
        Softmax scale, ``1 / sqrt(D)`` by default.

    Returns
    -------
    (B, H_q, N + 1, D), dtype of ``q``: ``plan.out``, overwritten by the next run on the plan.
    """
    if not plan.fits(q, k_cache, v_cache, k_tree, v_tree):
        raise ValueError(
            f"q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)} ({q.dtype} on {q.device}) do not fit the plan "
            f"(q {tuple(plan.q_shape)}, k_cache {tuple(plan.cache_shape)}, k_tree given: {plan.tree_shape is not None}, "
            f"{plan.dtype} on {plan.device}, contiguous head_dim): plan again"
        )
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    torch.ops.bastion_ext.tree_attention(
        q, k_cache, v_cache, k_tree, v_tree, plan.ancestor_bits, plan.cache_lens,
        plan.out, plan.part_o, plan.part_lse, scale, list(plan.launch),
    )
    return plan.out


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
    """Attention of the verify tokens over the KV cache and their tree ancestors, planned and
    run in one call (a layered model plans once per round instead: ``plan_tree_attention``).

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
    plan = plan_tree_attention(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, num_splits)
    return run_tree_attention(plan, q, k_cache, v_cache, k_tree, v_tree, scale)
