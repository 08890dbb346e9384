"""The plan of a round's tree attention: decided and checked once, run by every layer.

As with FlashInfer's ``plan()``: the tiles, the cache splits and the workspace (the output
and the splits' partials) depend only on the round's shapes and tree, which every layer of
the verify forward shares, so one plan serves all of them and no layer allocates or checks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton

from bastion_ext.attention.checks import check_tree_attention_args

# Fewer cache keys per split than this and the partial writes and pipeline warm-up cost more
# than the parallelism buys (H200, N = 16, L = 16384, B = 1: 16 splits 0.052 ms, 32 splits 0.088).
_MIN_SPLIT_KEYS = 1024


class LaunchConfig(NamedTuple):
    """How the kernels are laid out on the GPU (see ``bastion_ext.attention``); the op takes
    it as its ``launch`` list, in this order."""

    block_m: int  # packed query rows per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int
    num_splits: int  # cache chunks run in parallel; 1: no partials, no combine
    chunk_len: int  # cache keys per split, whole BLOCK_N tiles


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


def _launch_config(q: torch.Tensor, k_cache: torch.Tensor, tree_in_cache: bool, num_splits: int | None) -> LaunchConfig:
    """Tiles, warps and cache splits of checked arguments; ``num_splits`` None picks one."""
    batch, n_q_heads, n_verify, _ = q.shape
    n_kv_heads = k_cache.shape[1]
    cache_capacity = k_cache.shape[2] - (n_verify if tree_in_cache else 0)
    n_rows = n_q_heads // n_kv_heads * n_verify
    block_m, block_n, num_warps, num_stages = _pick_blocks(n_rows)
    if num_splits is None:
        num_splits = _pick_num_splits(triton.cdiv(n_rows, block_m) * batch * n_kv_heads, cache_capacity, q.device)
    # Chunks are whole tiles; recount the splits so that none is empty by construction.
    chunk_len = block_n * max(1, triton.cdiv(triton.cdiv(max(cache_capacity, 1), num_splits), block_n))
    num_splits = max(1, triton.cdiv(cache_capacity, chunk_len))
    return LaunchConfig(block_m, block_n, num_warps, num_stages, num_splits, chunk_len)


@dataclass(frozen=True, eq=False)
class TreeAttentionPlan:
    """One round's tree attention, for ``run_tree_attention`` to run once per layer.

    ancestor_bits: (B, N, ceil(N / 32)) int32 and cache_lens: (B,) int32 / int64, the round's
    tree and cache lengths, shared by every layer. out: (B, H_q, N + 1, D), dtype of q, where
    every run writes its result (each layer's result is consumed before the next layer runs).
    part_o: (num_splits, B * H_kv, H_q / H_kv * (N + 1), D) fp32 and part_lse: the same without
    D, the splits' partial outputs and base-2 log-sum-exps; (0,) fp32 when the cache is not split.
    """

    ancestor_bits: torch.Tensor
    cache_lens: torch.Tensor
    out: torch.Tensor
    part_o: torch.Tensor
    part_lse: torch.Tensor
    launch: LaunchConfig
    q_shape: torch.Size
    cache_shape: torch.Size
    tree_shape: torch.Size | None  # None: the verify tokens' keys follow the cache (HF layout)
    dtype: torch.dtype
    device: torch.device

    def fits(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             k_tree: torch.Tensor | None = None, v_tree: torch.Tensor | None = None) -> bool:
        """Whether a layer's tensors have the planned shapes, dtype and device and a
        contiguous last dimension: a few comparisons instead of the plan's checks."""
        if (k_tree is None) != (self.tree_shape is None) or (k_tree is None) != (v_tree is None):
            return False
        pairs = [(q, self.q_shape), (k_cache, self.cache_shape), (v_cache, self.cache_shape)]
        if k_tree is not None:
            pairs += [(k_tree, self.tree_shape), (v_tree, self.tree_shape)]
        return all(
            t.shape == shape and t.dtype == self.dtype and t.device == self.device and t.stride(-1) == 1
            for t, shape in pairs
        )


def plan_tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_tree: torch.Tensor | None,
    v_tree: torch.Tensor | None,
    ancestor_bits: torch.Tensor,
    cache_lens: torch.Tensor,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> TreeAttentionPlan:
    """Check the arguments of a round's tree attention once, choose its tiles and splits and
    allocate its workspace.

    Parameters
    ----------
    q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens
        As ``tree_attention``'s, from any one layer: every layer run on the plan must have the
        shapes, dtype and device of these (``TreeAttentionPlan.fits``).
    out : (B, H_q, N + 1, D), dtype of ``q``, optional
        The buffer every run writes; any strides with a contiguous last dimension. Default:
        ``torch.empty_like(q)``.
    num_splits : int, optional
        Cache chunks run in parallel (flash-decoding); by default chosen from the
        multiprocessor count so that small trees still fill the GPU.

    Returns
    -------
    TreeAttentionPlan

    Raises
    ------
    ValueError
        Naming the argument, unless the kernels can run on these.
    """
    check_tree_attention_args(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, num_splits)
    launch = _launch_config(q, k_cache, k_tree is None, num_splits)
    batch, n_q_heads, n_verify, head_dim = q.shape
    n_kv_heads = k_cache.shape[1]
    if launch.num_splits > 1:
        rows_shape = (launch.num_splits, batch * n_kv_heads, n_q_heads // n_kv_heads * n_verify)
        part_o = torch.empty(rows_shape + (head_dim,), dtype=torch.float32, device=q.device)
        part_lse = torch.empty(rows_shape, dtype=torch.float32, device=q.device)
    else:
        # Two tensors, not one: the op writes both, and written arguments must not alias.
        part_o = torch.empty((0,), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((0,), dtype=torch.float32, device=q.device)
    return TreeAttentionPlan(
        ancestor_bits, cache_lens, torch.empty_like(q) if out is None else out, part_o, part_lse, launch,
        q.shape, k_cache.shape, None if k_tree is None else k_tree.shape, q.dtype, q.device,
    )
