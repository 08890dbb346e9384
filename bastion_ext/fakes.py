"""Fake (meta) implementations of the compiled ops, for ``torch.compile`` and meta tensors.

The tree ops return nothing and write their outputs in place, so their fakes only check;
``skinny_linear`` returns a new tensor, which its fake makes empty. It mirrors
every check of the op that needs no tensor data (``csrc/build_tree_args.h``, ``csrc/checks.h``,
``csrc/compact_kv.h``): ranks, shapes, dtypes, devices, contiguity and scalar ranges, raising
``ValueError`` as the op does. Value checks (finite logits, budgets in range) need data and
stay with the CPU op.
"""

from __future__ import annotations

import torch

from bastion_ext import _C
from bastion_ext.tree import DraftTree, VerifyResult

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _expect(t: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...], shape: tuple, device: torch.device, contiguous: bool = False) -> None:
    """Rank and shape (``None`` = any size), dtype, device and (for outputs) density of ``t``."""
    shown = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    torch._check_value(
        t.dim() == len(shape) and all(want is None or got == want for got, want in zip(t.shape, shape)),
        lambda: f"{name} must have shape {shown}, got shape {tuple(t.shape)}",
    )
    torch._check_value(t.dtype in dtypes, lambda: f"{name} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
    torch._check_value(t.device == device, lambda: f"{name} must be on the same device as the op's first input ({device}), got {t.device}")
    if contiguous:
        torch._check_value(t.is_contiguous(), lambda: f"{name} must be contiguous")


def _expect_outputs(outputs: dict[str, torch.Tensor], layout: dict[str, tuple[torch.dtype, tuple[int, ...]]], device: torch.device) -> None:
    for name, (dtype, shape) in layout.items():
        _expect(outputs[name], name, (dtype,), shape, device, contiguous=True)


@torch.library.register_fake("bastion_ext::build_tree")
def _build_tree_fake(draft_logits, context_lens, budgets, latency_table, accept_scale, k, policy,
                     tokens, parents, depth, positions, scores, n_nodes, ancestor_bits, first_child, next_sibling):  # fmt: skip
    device = draft_logits.device
    _expect(draft_logits, "draft_logits", LOGIT_DTYPES, (None, None, None), device)
    batch, num_pos, vocab = draft_logits.shape
    torch._check_value(batch >= 1 and vocab >= 1, lambda: f"draft_logits must have batch >= 1 and vocab >= 1, got shape {tuple(draft_logits.shape)}")
    torch._check_value(1 <= num_pos <= _C.MAX_POSITIONS, lambda: f"draft_logits positions must be in [1, {_C.MAX_POSITIONS}], got shape {tuple(draft_logits.shape)}")
    torch._check_value(1 <= k <= min(vocab, _C.MAX_K), lambda: f"k must be in [1, min(vocab, {_C.MAX_K})], got {k}")
    torch._check_value(0 <= policy <= 2, lambda: f"policy must be 0 (fixed), 1 (greedy_stop) or 2 (argmax), got {policy}")
    _expect(tokens, "tokens", (torch.int64,), (batch, None), device)
    max_nodes = tokens.shape[1]
    torch._check_value(1 <= max_nodes <= _C.MAX_NODES, lambda: f"max_nodes (tokens.size(1)) must be in [1, {_C.MAX_NODES}], got {max_nodes}")
    _expect(context_lens, "context_lens", (torch.int64,), (batch,), device)
    _expect(budgets, "budgets", (torch.int32,), (batch,), device)
    if latency_table is None:
        torch._check_value(policy == _C.POLICY_FIXED, lambda: f"latency_table is required for policy {policy} (only fixed runs without it)")
    else:
        _expect(latency_table, "latency_table", (torch.float32,), (None, max_nodes), device)
        torch._check_value(latency_table.shape[0] in (1, batch), lambda: f"latency_table must have shape ({batch} or 1, {max_nodes}), got shape {tuple(latency_table.shape)}")
    if accept_scale is not None:
        _expect(accept_scale, "accept_scale", (torch.float32,), (None,), device)
        torch._check_value(accept_scale.shape[0] in (1, batch), lambda: f"accept_scale must have shape ({batch} or 1,), got shape {tuple(accept_scale.shape)}")
    outputs = dict(tokens=tokens, parents=parents, depth=depth, positions=positions, scores=scores, n_nodes=n_nodes,
                   ancestor_bits=ancestor_bits, first_child=first_child, next_sibling=next_sibling)  # fmt: skip
    _expect_outputs(outputs, DraftTree.layout(batch, max_nodes), device)


def _check_verify_tree(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus) -> tuple[int, int]:
    """The checks verify_greedy and verify_sample share; returns (batch, max_nodes)."""
    device = tokens.device
    _expect(tokens, "tokens", (torch.int64,), (None, None), device)
    batch, max_nodes = tokens.shape
    torch._check_value(1 <= max_nodes <= _C.MAX_NODES, lambda: f"max_nodes (tokens.size(1)) must be in [1, {_C.MAX_NODES}], got {max_nodes}")
    _expect(first_child, "first_child", (torch.int32,), (batch, max_nodes + 1), device)
    _expect(next_sibling, "next_sibling", (torch.int32,), (batch, max_nodes), device)
    _expect(accepted_nodes, "accepted_nodes", (torch.int32,), (batch, None), device, contiguous=True)
    positions = accepted_nodes.shape[1]
    torch._check_value(1 <= positions <= _C.MAX_POSITIONS, lambda: f"accepted_nodes positions must be in [1, {_C.MAX_POSITIONS}], got shape {tuple(accepted_nodes.shape)}")
    outputs = dict(accepted_nodes=accepted_nodes, accept_len=accept_len, bonus=bonus)
    _expect_outputs(outputs, VerifyResult.layout(batch, positions), device)
    return batch, max_nodes


@torch.library.register_fake("bastion_ext::verify_greedy")
def _verify_greedy_fake(tokens, first_child, next_sibling, target_argmax, accepted_nodes, accept_len, bonus):
    batch, max_nodes = _check_verify_tree(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus)
    _expect(target_argmax, "target_argmax", (torch.int64,), (batch, max_nodes + 1), tokens.device)


@torch.library.register_fake("bastion_ext::verify_sample")
def _verify_sample_fake(tokens, first_child, next_sibling, target_probs, uniforms, accepted_nodes, accept_len, bonus):
    batch, max_nodes = _check_verify_tree(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus)
    _expect(target_probs, "target_probs", (torch.float32,), (batch, max_nodes + 1, None), tokens.device)
    torch._check_value(target_probs.shape[2] >= 1, lambda: f"target_probs must have vocab >= 1, got shape {tuple(target_probs.shape)}")
    _expect(uniforms, "uniforms", (torch.float32,), (batch, max_nodes + 1), tokens.device)


@torch.library.register_fake("bastion_ext::compact_kv")
def _compact_kv_fake(cache, cache_lens, accepted_nodes, accept_len):
    device = cache.device
    _expect(cache, "cache", LOGIT_DTYPES, (None,) * 5, device, contiguous=True)
    batch = cache.shape[1]
    _expect(cache_lens, "cache_lens", (torch.int64,), (batch,), device)
    _expect(accepted_nodes, "accepted_nodes", (torch.int32,), (batch, None), device)
    _expect(accept_len, "accept_len", (torch.int32,), (batch,), device)


@torch.library.register_fake("bastion_ext::skinny_linear")
def _skinny_linear_fake(x, weight):
    device = x.device
    _expect(x, "x", (torch.float32,), (None, None), device, contiguous=True)
    _expect(weight, "weight", (torch.float32,), (None, x.shape[1]), device, contiguous=True)
    return x.new_empty((x.shape[0], weight.shape[0]))
