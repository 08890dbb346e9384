"""Typed wrappers over the compiled ops (``torch.ops.bastion_ext.*``), with their fakes.

Each layer checks what it alone can see, once. The compiled op checks shapes, dtypes, devices
and (on the CPU, where it reads them anyway) values, raising ``ValueError`` naming the
argument; on CUDA it never reads device memory back, so values there follow the kernels'
defined behaviour (``csrc/*_cuda.cuh``). A wrapper checks Python types, what it needs to size
its allocations, and ``out=``; then it calls the op, which dispatches on the device of its
inputs. A fake mirrors the op's shape, dtype and device checks for ``torch.compile`` and
meta tensors. Semantics: ``docs/ops.md``.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Sequence

import torch

from bastion_ext import _C  # noqa: F401  (importing it registers torch.ops.bastion_ext)
from bastion_ext import fakes  # noqa: F401  (registers the ops' fakes)
from bastion_ext.tree import DraftTree, VerifyResult

POLICIES = {"fixed": _C.POLICY_FIXED, "greedy_stop": _C.POLICY_GREEDY_STOP, "argmax": _C.POLICY_ARGMAX}
MAX_K = _C.MAX_K
MAX_POSITIONS = _C.MAX_POSITIONS
MAX_NODES = _C.MAX_NODES
# The tree attention op (``bastion_ext::tree_attention``) is Triton code, imported on first use:
# the compiled ops need no Triton, and TRITON_INTERPRET must be set before its kernels load.
_ATTENTION = ("tree_attention", "plan_tree_attention", "run_tree_attention", "TreeAttentionPlan")


def __getattr__(name: str):
    if name in _ATTENTION:
        return getattr(importlib.import_module("bastion_ext.attention"), name)
    raise AttributeError(f"module 'bastion_ext.ops' has no attribute {name!r}")


def _fail_unless(ok: bool, message) -> None:
    """Raise ``ValueError(message())`` unless ``ok``. The message is built only on failure,
    so that ``torch.compile`` traces the checks without formatting symbolic sizes."""
    if not ok:
        raise ValueError(message())


def _check_is_tensor(t: object, name: str) -> None:
    _fail_unless(isinstance(t, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _is_int(value: object) -> bool:
    """An integer (numpy's too), not a bool (True would silently count as 1) nor a float
    (8.5 would become 8)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_int_tensor(value: torch.Tensor | Sequence[int], name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-request argument given as a tensor or a sequence of ints (copied to ``device``)."""
    if isinstance(value, torch.Tensor):
        return value
    message = lambda: f"{name} must be a tensor or a sequence of ints that fit {dtype}, got {value!r}"  # noqa: E731
    try:
        values = list(value)
    except TypeError:
        raise ValueError(message()) from None
    _fail_unless(all(_is_int(v) for v in values), message)
    try:
        return torch.tensor(values, dtype=dtype, device=device)
    except (RuntimeError, OverflowError, ValueError):  # out of the dtype's range (the error varies)
        raise ValueError(message()) from None


def _check_out(out: object, cls: type, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]], device: torch.device) -> None:
    """``out=`` must be a ``cls`` whose tensors match ``layout``, dense, on ``device``."""
    _fail_unless(isinstance(out, cls), lambda: f"out must be a {cls.__name__}, got {type(out).__name__}")
    for name, (dtype, shape) in layout.items():
        t = getattr(out, name)
        _check_is_tensor(t, f"out.{name}")
        ok = t.dtype == dtype and tuple(t.shape) == shape and t.device == device and t.is_contiguous()
        _fail_unless(ok, lambda: f"out.{name} must be a contiguous {dtype} tensor of shape {shape} on {device}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def build_tree(
    draft_logits: torch.Tensor,
    k: int,
    max_nodes: int,
    *,
    policy: str = "fixed",
    budgets: torch.Tensor | Sequence[int] | None = None,
    latency_table: torch.Tensor | None = None,
    accept_scale: torch.Tensor | None = None,
    context_lens: torch.Tensor | Sequence[int] | None = None,
    out: DraftTree | None = None,
) -> DraftTree:
    """Top-K per position, best-first expansion, and the budget cut, for B requests at once.

    Parameters
    ----------
    draft_logits : (B, P, V) float32, float16 or bfloat16
        Drafter logits; ``1 <= P <= MAX_POSITIONS``. No NaN or +inf; -inf is probability 0.
    k : int
        Candidates per position, ``1 <= k <= min(V, MAX_K)``.
    max_nodes : int
        Capacity N of the output tensors, ``1 <= N <= MAX_NODES``.
    policy : {"fixed", "greedy_stop", "argmax"}
        Where to cut the pop sequence (docs/ops.md step 3).
    budgets : (B,) int32, optional
        Fixed: nodes per request; other policies: the cap. ``1 <= budget <= N``; default N.
    latency_table : (B, N) or (1, N) float32, optional
        ``T(n)`` at column ``n - 1``, finite and > 0. Required unless ``policy == "fixed"``.
    accept_scale : (B,) or (1,) float32, optional
        Multiplies the accepted-length surrogate; finite, >= 0; default 1.
    context_lens : (B,) int64, optional
        Position of each request's root (node positions are ``context_lens + depth``), in
        ``[0, 2**62]``; default 0.
    out : DraftTree, optional
        Preallocated outputs (``DraftTree.empty``), written in full and returned.

    Returns
    -------
    DraftTree
        The trees, every output element written (padding past ``n_nodes``).
    """
    _check_is_tensor(draft_logits, "draft_logits")
    # The rank and max_nodes size the allocations below; the op checks everything else.
    _fail_unless(draft_logits.dim() == 3, lambda: f"draft_logits must be 3-D [batch, positions, vocab], got shape {tuple(draft_logits.shape)}")
    _fail_unless(_is_int(k), lambda: f"k must be an int, got {k!r}")
    _fail_unless(_is_int(max_nodes) and 1 <= max_nodes <= MAX_NODES, lambda: f"max_nodes must be an int in [1, {MAX_NODES}], got {max_nodes!r}")
    _fail_unless(policy in POLICIES, lambda: f"policy must be one of {tuple(POLICIES)}, got {policy!r}")
    for name, t in (("latency_table", latency_table), ("accept_scale", accept_scale)):
        if t is not None:
            _check_is_tensor(t, name)
    batch, num_pos, _ = draft_logits.shape
    device = draft_logits.device
    budgets = torch.full((batch,), max_nodes, dtype=torch.int32, device=device) if budgets is None else _as_int_tensor(budgets, "budgets", torch.int32, device)
    context_lens = torch.zeros((batch,), dtype=torch.int64, device=device) if context_lens is None else _as_int_tensor(context_lens, "context_lens", torch.int64, device)
    if out is None:
        out = DraftTree.empty(batch, max_nodes, num_pos, device)
    else:
        _check_out(out, DraftTree, DraftTree.layout(batch, max_nodes), device)
        out.draft_positions = num_pos
    torch.ops.bastion_ext.build_tree(
        draft_logits, context_lens, budgets, latency_table, accept_scale, k, POLICIES[policy], *out.tensors().values()
    )
    return out


def _verify_out(tree: DraftTree, out: VerifyResult | None) -> VerifyResult:
    """``out`` checked against the tree, or fresh buffers."""
    if out is None:
        return VerifyResult.empty(tree.batch_size, tree.draft_positions, tree.device)
    _check_out(out, VerifyResult, VerifyResult.layout(tree.batch_size, tree.draft_positions), tree.device)
    return out


def verify_greedy(
    tree: DraftTree,
    target_argmax: torch.Tensor | None = None,
    *,
    target_logits: torch.Tensor | None = None,
    out: VerifyResult | None = None,
) -> VerifyResult:
    """The greedy acceptance walk: follow the child whose token is the target's argmax.

    Parameters
    ----------
    tree : DraftTree
        From ``build_tree`` (its ``max_nodes`` N and ``draft_positions`` P).
    target_argmax : (B, N + 1) int64, optional
        The target's argmax per verify token (0 = root, i + 1 = node i); token ids >= 0
        (checked on the CPU for the tokens the walk visits).
    target_logits : (B, N + 1, V) float, optional
        Instead of ``target_argmax``: reduced with ``torch.argmax`` on their device.
    out : VerifyResult, optional
        Preallocated outputs (``VerifyResult.empty``).

    Returns
    -------
    VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    """
    _fail_unless(isinstance(tree, DraftTree), lambda: f"tree must be a DraftTree, got {type(tree).__name__}")
    _fail_unless((target_argmax is None) != (target_logits is None), lambda: "pass exactly one of target_argmax and target_logits")
    if target_logits is not None:
        # A wrapper-only argument: its checks are the wrapper's.
        _check_is_tensor(target_logits, "target_logits")
        want = (tree.batch_size, tree.max_nodes + 1)
        _fail_unless(target_logits.is_floating_point() and target_logits.dim() == 3 and tuple(target_logits.shape[:2]) == want,
                     lambda: f"target_logits must be a float tensor of shape ({want[0]}, {want[1]}, vocab), got {target_logits.dtype} {tuple(target_logits.shape)}")
        target_argmax = torch.argmax(target_logits, dim=-1)
    _check_is_tensor(target_argmax, "target_argmax")
    out = _verify_out(tree, out)
    torch.ops.bastion_ext.verify_greedy(tree.tokens, tree.first_child, tree.next_sibling, target_argmax, *out.tensors().values())
    return out


def verify_sample(
    tree: DraftTree,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    out: VerifyResult | None = None,
) -> VerifyResult:
    """Lossless sample-and-match: sample each visited verify token by inverse CDF, then walk.

    Parameters
    ----------
    tree : DraftTree
        From ``build_tree``.
    target_probs : (B, N + 1, V) float32
        Target probabilities per verify token: entries finite and >= 0, rows summing to 1
        within 1e-3 (checked on the CPU for the rows the walk visits).
    uniforms : (B, N + 1) float32
        One uniform in [0, 1) per verify token; only the visited ones are used (and checked,
        on the CPU).
    out : VerifyResult, optional
        Preallocated outputs (``VerifyResult.empty``).

    Returns
    -------
    VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    """
    _fail_unless(isinstance(tree, DraftTree), lambda: f"tree must be a DraftTree, got {type(tree).__name__}")
    _check_is_tensor(target_probs, "target_probs")
    _check_is_tensor(uniforms, "uniforms")
    out = _verify_out(tree, out)
    torch.ops.bastion_ext.verify_sample(tree.tokens, tree.first_child, tree.next_sibling, target_probs, uniforms, *out.tensors().values())
    return out


def compact_kv(cache: torch.Tensor, cache_lens: torch.Tensor, accepted_nodes: torch.Tensor, accept_len: torch.Tensor) -> torch.Tensor:
    """Keep the accepted path's cache entries after a verify forward, in place (docs/ops.md).

    Parameters
    ----------
    cache : (G, B, H, L, D) float32, float16 or bfloat16, contiguous
        Every layer's keys and values stacked on G; the verify forward wrote request b's root
        at slot ``cache_lens[b]`` and node i at ``cache_lens[b] + 1 + i``.
    cache_lens : (B,) int64
        Committed tokens of each request before the verify (the root's slot).
    accepted_nodes, accept_len : (B, P) int32, (B,) int32
        A ``VerifyResult``'s path.

    Returns
    -------
    cache
        The same tensor: slots ``cache_lens[b] + 1 .. cache_lens[b] + accept_len[b]`` now hold
        the path in order. Shapes, dtypes and values are checked by the op (``ValueError``).
    """
    for name, t in (("cache", cache), ("cache_lens", cache_lens), ("accepted_nodes", accepted_nodes), ("accept_len", accept_len)):
        _check_is_tensor(t, name)
    torch.ops.bastion_ext.compact_kv(cache, cache_lens, accepted_nodes, accept_len)
    return cache


def skinny_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` in fp32 on the CPU for the few rows of a decode step or a tree verify
    (docs/ops.md): each weight row read once per call, every output summed in one fixed order
    whatever the number of rows, so a row's output does not depend on the rows beside it.

    Parameters
    ----------
    x : (M, K) float32, CPU
        Rows of input features (any strides: a non-contiguous x is copied first).
    weight : (N, K) float32, CPU, contiguous
        A linear layer's weight.

    Returns
    -------
    out : (M, N) float32, a new tensor. Shapes, dtypes and devices are checked by the op
        (``ValueError`` naming the argument).
    """
    _check_is_tensor(x, "x")
    _check_is_tensor(weight, "weight")
    return torch.ops.bastion_ext.skinny_linear(x.contiguous(), weight)
