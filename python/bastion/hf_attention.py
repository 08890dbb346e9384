"""Tree verification inside Hugging Face models: ``attn_implementation="bastion_tree"``.

Importing this module registers one attention function and one mask function under the name
``bastion_tree`` with transformers' ``AttentionInterface`` / ``AttentionMaskInterface``. Any
model that dispatches through them (Llama, Qwen2/3, Mistral, ... in transformers 5) then runs:

- ordinary forwards (prefill, plain decoding) through SDPA, exactly as ``"sdpa"`` would;
- forwards inside ``tree_verify_context(...)`` through ``bastion_ext.attention``'s tree attention:
  the queries are the root and the tree nodes, the keys the layer's cache after its update
  (committed context followed by the verify tokens), and the mask the tree's packed
  ``ancestor_bits``. No 4D mask is built for them. The first layer plans the forward's attention
  (checks, tiles, cache splits, output and partials); every later layer runs on that plan.

The tree reaches the attention layers through a context variable rather than through forward
kwargs, so it passes unchanged through every model's forward signature::

    model.set_attn_implementation("bastion_tree")   # or from_pretrained(..., attn_implementation=...)
    with tree_verify_context(tree["ancestor_bits"]):
        logits = model(input_ids=verify_ids, position_ids=positions, past_key_values=cache).logits
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bastion_ext.attention import TreeAttentionPlan, plan_tree_attention, run_tree_attention

ATTN_IMPLEMENTATION = "bastion_tree"


@dataclass
class TreeVerify:
    """The tree of the forward in flight.

    ancestor_bits: (B, N, ceil(N / 32)) int32 on the model's device (``build_tree``'s output).
    cache_lens: (B,) int64 on the model's device, or None: the number of committed keys before
    the verify tokens in each layer's key tensor; None means all of them but the last N + 1
    (a ``DynamicCache``). The verify tokens' keys must sit right after ``cache_lens[b]``, and
    keys ``0 .. cache_lens[b] - 1`` are all visible (a padding mask passed to the forward is
    not applied in a tree verify): requests of different lengths need a cache that writes each
    request's new tokens after its own context, not a left-padded ``DynamicCache``.
    plan: the tree attention's plan, made by the forward's first layer and run by every layer
    whose tensors fit it (a layer of other shapes plans again).
    """

    ancestor_bits: torch.Tensor
    cache_lens: torch.Tensor | None
    plan: TreeAttentionPlan | None = None


_ACTIVE_TREE: contextvars.ContextVar[TreeVerify | None] = contextvars.ContextVar("bastion_tree", default=None)


@contextmanager
def tree_verify_context(ancestor_bits: torch.Tensor, cache_lens: torch.Tensor | None = None) -> Iterator[TreeVerify]:
    """Make the forwards inside the ``with`` block verify this tree.

    Parameters
    ----------
    ancestor_bits : (B, N, ceil(N / 32)) int32
        The tree's ancestor bits; the forward's input holds ``N + 1`` tokens per request
        (the root, then node ``i`` at index ``i + 1``), with position ids ``context + depth``.
    cache_lens : (B,) int64, optional
        Committed keys before the verify tokens in each layer's key tensor (see ``TreeVerify``).
    """
    if ancestor_bits.dim() != 3 or ancestor_bits.dtype != torch.int32:
        raise ValueError(
            f"ancestor_bits must be 3-D int32 [batch, nodes, words], got {ancestor_bits.dtype} {tuple(ancestor_bits.shape)}"
        )
    token = _ACTIVE_TREE.set(TreeVerify(ancestor_bits, cache_lens))
    try:
        yield _ACTIVE_TREE.get()
    finally:
        _ACTIVE_TREE.reset(token)


def tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: tree verify inside ``tree_verify_context``, SDPA outside.

    query: (B, H_q, S, D); key, value: (B, H_kv, K, D), the layer's cache after its update.
    Returns ((B, S, H_q, D) attention output, None), the layout transformers expects.
    """
    tree = _ACTIVE_TREE.get()
    if tree is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout:
        raise ValueError(f"tree verification runs without dropout, got dropout={dropout}")
    if tree.plan is None or not tree.plan.fits(query, key, value):
        tree.plan = _plan(tree, query, key, value)
    # The plan's output is a transposed (B, S, H_q, D) buffer: transposed back, it is already
    # in the layout transformers expects.
    return run_tree_attention(tree.plan, query, key, value, scale=scaling).transpose(1, 2), None


def _plan(tree: TreeVerify, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> TreeAttentionPlan:
    """The plan of a forward's tree attention from one layer's query (B, H_q, S, D) and key /
    value (B, H_kv, K, D). Its output buffer is reused by every layer: transformers consumes a
    layer's attention output (the output projection) before the next layer's attention runs."""
    batch, n_q_heads, n_verify, head_dim = query.shape
    if tree.ancestor_bits.shape[:2] != (batch, n_verify - 1):
        raise ValueError(
            f"the forward holds {n_verify} tokens per request for {batch} requests, so ancestor_bits must be "
            f"[{batch}, {n_verify - 1}, words], got {tuple(tree.ancestor_bits.shape)}"
        )
    cache_lens = tree.cache_lens
    if cache_lens is None:
        cache_lens = torch.full((batch,), key.shape[2] - n_verify, dtype=torch.int64, device=query.device)
    out = torch.empty((batch, n_verify, n_q_heads, head_dim), dtype=query.dtype, device=query.device)
    return plan_tree_attention(query, key, value, None, None, tree.ancestor_bits, cache_lens, out=out.transpose(1, 2))


def tree_mask(**kwargs) -> torch.Tensor | None:
    """transformers mask function: none for a tree verify (the kernel reads the ancestor bits),
    SDPA's mask otherwise."""
    if _ACTIVE_TREE.get() is not None:
        return None
    return sdpa_mask(**kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, tree_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, tree_mask)
