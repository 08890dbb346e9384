"""The argument checks of tree attention, run once per plan (``plan_tree_attention``)."""

from __future__ import annotations

import torch
import triton
from triton.runtime.jit import JITFunction

from bastion_ext.attention.kernels import tree_attention_kernel

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_4d(name: str, t: torch.Tensor, batch: int, heads: int | None, head_dim: int, meaning: str) -> None:
    if t.dim() != 4 or t.shape[0] != batch or (heads is not None and t.shape[1] != heads) or t.shape[3] != head_dim:
        raise ValueError(f"{name} must be 4-D {meaning}, got shape {tuple(t.shape)}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last (head_dim) dimension, got strides {t.stride()}")


def check_tree_attention_args(q, k_cache, v_cache, k_tree, v_tree, ancestor_bits, cache_lens, out, num_splits) -> None:
    """Raise ValueError, naming the argument, unless ``tree_attention`` can run on these."""
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D [batch, q_heads, verify_tokens, head_dim], got shape {tuple(q.shape)}")
    batch, n_q_heads, n_verify, head_dim = q.shape
    if q.device.type != "cuda" and isinstance(tree_attention_kernel, JITFunction):
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

