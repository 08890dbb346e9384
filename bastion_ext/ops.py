"""Typed wrappers over the compiled ops (``torch.ops.bastion_ext.*``), with their fakes.

Each wrapper checks its arguments in Python and raises ``ValueError`` naming the bad one
before any kernel runs, allocates the outputs (or writes into ``out=``), and calls the op,
which dispatches on the device of its inputs. Semantics: ``docs/ops.md``.

``validate=True`` (the default) also checks tensor *values* (finite logits, budgets in range,
...); that reads data back to the host, so hot loops and CUDA-graph captures pass
``validate=False``, which keeps the wrappers free of host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bastion_ext import _C  # noqa: F401  (importing it registers torch.ops.bastion_ext)
from bastion_ext.tree import DraftTree, VerifyResult

POLICIES = {"fixed": _C.POLICY_FIXED, "greedy_stop": _C.POLICY_GREEDY_STOP, "argmax": _C.POLICY_ARGMAX}
MAX_K = _C.MAX_K
MAX_POSITIONS = _C.MAX_POSITIONS
MAX_NODES = _C.MAX_NODES
LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fail_unless(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_tensor(t: object, name: str, dtype: torch.dtype, shape: tuple[int | None, ...], device: torch.device) -> None:
    """Type, dtype, shape (None = any size) and device of one argument."""
    _fail_unless(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _fail_unless(t.dtype == dtype, f"{name} must be {dtype}, got {t.dtype}")
    ok = t.dim() == len(shape) and all(want is None or got == want for got, want in zip(t.shape, shape))
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    _fail_unless(ok, f"{name} must have shape {want}, got {tuple(t.shape)}")
    _fail_unless(t.device == device, f"{name} must be on {device} (the device of the other inputs), got {t.device}")


def _as_int_tensor(value: torch.Tensor | Sequence[int], name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-request argument given as a tensor or a list of ints."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.tensor(list(value), dtype=dtype, device=device)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or a sequence of ints, got {value!r}") from err


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
    validate: bool = True,
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
        Position of each request's root (node positions are ``context_lens + depth``); default 0.
    out : DraftTree, optional
        Preallocated outputs (``DraftTree.empty``), written in full and returned.
    validate : bool
        Check tensor values too (reads them on the host). Pass False in graph-captured paths.

    Returns
    -------
    DraftTree
        The trees, every output element written (padding past ``n_nodes``).
    """
    _fail_unless(isinstance(draft_logits, torch.Tensor), f"draft_logits must be a torch.Tensor, got {type(draft_logits).__name__}")
    _fail_unless(
        draft_logits.dim() == 3,
        f"draft_logits must be 3-D [batch, positions, vocab], got shape {tuple(draft_logits.shape)}",
    )
    _fail_unless(draft_logits.dtype in LOGIT_DTYPES, f"draft_logits must be float32, float16 or bfloat16, got {draft_logits.dtype}")
    batch, num_pos, vocab = draft_logits.shape
    device = draft_logits.device
    _fail_unless(batch >= 1 and vocab >= 1, f"draft_logits must have batch >= 1 and vocab >= 1, got shape {tuple(draft_logits.shape)}")
    _fail_unless(
        1 <= num_pos <= MAX_POSITIONS,
        f"draft_logits positions must be in [1, {MAX_POSITIONS}], got shape {tuple(draft_logits.shape)}",
    )
    _fail_unless(isinstance(k, int) and 1 <= k <= min(vocab, MAX_K), f"k must be an int in [1, min(vocab, {MAX_K})] = [1, {min(vocab, MAX_K)}], got {k!r}")
    _fail_unless(isinstance(max_nodes, int) and 1 <= max_nodes <= MAX_NODES, f"max_nodes must be an int in [1, {MAX_NODES}], got {max_nodes!r}")
    _fail_unless(policy in POLICIES, f"policy must be one of {tuple(POLICIES)}, got {policy!r}")

    budgets = torch.full((batch,), max_nodes, dtype=torch.int32, device=device) if budgets is None else _as_int_tensor(budgets, "budgets", torch.int32, device)
    _check_tensor(budgets, "budgets", torch.int32, (batch,), device)
    context_lens = torch.zeros((batch,), dtype=torch.int64, device=device) if context_lens is None else _as_int_tensor(context_lens, "context_lens", torch.int64, device)
    _check_tensor(context_lens, "context_lens", torch.int64, (batch,), device)
    if latency_table is None:
        _fail_unless(policy == "fixed", f"latency_table is required for policy {policy!r} (only 'fixed' runs without it)")
    else:
        _check_tensor(latency_table, "latency_table", torch.float32, (None, max_nodes), device)
        _fail_unless(latency_table.shape[0] in (1, batch), f"latency_table must have shape ({batch} or 1, {max_nodes}), got {tuple(latency_table.shape)}")
    if accept_scale is not None:
        _check_tensor(accept_scale, "accept_scale", torch.float32, (None,), device)
        _fail_unless(accept_scale.shape[0] in (1, batch), f"accept_scale must have shape ({batch} or 1,), got {tuple(accept_scale.shape)}")
    if out is None:
        out = DraftTree.empty(batch, max_nodes, num_pos, device)
    else:
        _check_tree_buffers(out, batch, max_nodes, device)
        out.draft_positions = num_pos

    if validate:
        _check_build_values(draft_logits, budgets, context_lens, latency_table, accept_scale, max_nodes)
    t = out
    torch.ops.bastion_ext.build_tree(
        draft_logits, context_lens, budgets, latency_table, accept_scale, k, POLICIES[policy],
        t.tokens, t.parents, t.depth, t.positions, t.scores, t.n_nodes, t.ancestor_bits, t.first_child, t.next_sibling,
    )  # fmt: skip
    return out


def _check_tree_buffers(tree: DraftTree, batch: int, max_nodes: int, device: torch.device) -> None:
    """``out=`` must be a DraftTree shaped like ``DraftTree.empty(batch, max_nodes, ...)``."""
    _fail_unless(isinstance(tree, DraftTree), f"out must be a DraftTree, got {type(tree).__name__}")
    rows, words = (batch, max_nodes), (batch, max_nodes, (max_nodes + 31) // 32)
    want = {
        "tokens": (torch.int64, rows),
        "parents": (torch.int32, rows),
        "depth": (torch.int32, rows),
        "positions": (torch.int64, rows),
        "scores": (torch.float32, rows),
        "n_nodes": (torch.int32, (batch,)),
        "ancestor_bits": (torch.int32, words),
        "first_child": (torch.int32, (batch, max_nodes + 1)),
        "next_sibling": (torch.int32, rows),
    }
    for name, t in tree.tensors().items():
        dtype, shape = want[name]
        _check_tensor(t, f"out.{name}", dtype, shape, device)
        _fail_unless(t.is_contiguous(), f"out.{name} must be contiguous")


def _check_build_values(
    draft_logits: torch.Tensor,
    budgets: torch.Tensor,
    context_lens: torch.Tensor,
    latency_table: torch.Tensor | None,
    accept_scale: torch.Tensor | None,
    max_nodes: int,
) -> None:
    """Value checks of build_tree's inputs (host syncs: the ``validate=True`` path only)."""
    # One reduction finds all three faults: a row max is NaN if the row holds a NaN, +inf if
    # it holds +inf, and -inf only if the whole row is -inf.
    row_max = draft_logits.amax(dim=-1)
    if not bool(torch.isfinite(row_max).all()):
        _fail_unless(not bool(torch.isneginf(row_max).any()), "draft_logits has a row that is all -inf (every position needs a token of positive probability)")
        raise ValueError("draft_logits must not contain NaN or +inf")
    _fail_unless(
        bool(((budgets >= 1) & (budgets <= max_nodes)).all()), f"budgets must be in [1, max_nodes = {max_nodes}], got {budgets.tolist()}"
    )
    _fail_unless(bool((context_lens >= 0).all()), f"context_lens must be >= 0, got {context_lens.tolist()}")
    if latency_table is not None:
        _fail_unless(bool((torch.isfinite(latency_table) & (latency_table > 0)).all()), "latency_table must be finite and > 0")
    if accept_scale is not None:
        _fail_unless(
            bool((torch.isfinite(accept_scale) & (accept_scale >= 0)).all()), f"accept_scale must be finite and >= 0, got {accept_scale.tolist()}"
        )


def _check_verify_tree(tree: DraftTree) -> None:
    _fail_unless(isinstance(tree, DraftTree), f"tree must be a DraftTree, got {type(tree).__name__}")


def _verify_out(tree: DraftTree, out: VerifyResult | None) -> VerifyResult:
    """``out`` checked against the tree, or fresh buffers."""
    if out is None:
        return VerifyResult.empty(tree.batch_size, tree.draft_positions, tree.device)
    _fail_unless(isinstance(out, VerifyResult), f"out must be a VerifyResult, got {type(out).__name__}")
    batch = tree.batch_size
    want = {"accepted_nodes": (torch.int32, (batch, tree.draft_positions)), "accept_len": (torch.int32, (batch,)), "bonus": (torch.int64, (batch,))}
    for name, (dtype, shape) in want.items():
        _check_tensor(getattr(out, name), f"out.{name}", dtype, shape, tree.device)
        _fail_unless(getattr(out, name).is_contiguous(), f"out.{name} must be contiguous")
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
        The target's argmax per verify token (0 = root, i + 1 = node i).
    target_logits : (B, N + 1, V) float, optional
        Instead of ``target_argmax``: reduced with ``torch.argmax`` on their device.
    out : VerifyResult, optional
        Preallocated outputs (``VerifyResult.empty``).

    Returns
    -------
    VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    """
    _check_verify_tree(tree)
    batch, rows = tree.batch_size, tree.max_nodes + 1
    _fail_unless((target_argmax is None) != (target_logits is None), "pass exactly one of target_argmax and target_logits")
    if target_logits is not None:
        _fail_unless(isinstance(target_logits, torch.Tensor), f"target_logits must be a torch.Tensor, got {type(target_logits).__name__}")
        _fail_unless(target_logits.is_floating_point(), f"target_logits must be a float tensor, got {target_logits.dtype}")
        _check_tensor(target_logits, "target_logits", target_logits.dtype, (batch, rows, None), tree.device)
        target_argmax = torch.argmax(target_logits, dim=-1)
    _check_tensor(target_argmax, "target_argmax", torch.int64, (batch, rows), tree.device)
    out = _verify_out(tree, out)
    torch.ops.bastion_ext.verify_greedy(
        tree.tokens, tree.first_child, tree.next_sibling, target_argmax, out.accepted_nodes, out.accept_len, out.bonus
    )
    return out


def verify_sample(
    tree: DraftTree,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    out: VerifyResult | None = None,
    *,
    validate: bool = True,
) -> VerifyResult:
    """Lossless sample-and-match: sample each visited verify token by inverse CDF, then walk.

    Parameters
    ----------
    tree : DraftTree
        From ``build_tree``.
    target_probs : (B, N + 1, V) float32
        Target probabilities per verify token (rows sum to 1, at least one entry > 0).
    uniforms : (B, N + 1) float32
        One uniform in [0, 1) per verify token; only the visited ones are used.
    out : VerifyResult, optional
        Preallocated outputs (``VerifyResult.empty``).
    validate : bool
        Check that the uniforms lie in [0, 1) (a host sync).

    Returns
    -------
    VerifyResult
        accepted_nodes (B, P) int32, accept_len (B,) int32, bonus (B,) int64.
    """
    _check_verify_tree(tree)
    batch, rows = tree.batch_size, tree.max_nodes + 1
    _check_tensor(target_probs, "target_probs", torch.float32, (batch, rows, None), tree.device)
    _fail_unless(target_probs.shape[2] >= 1, f"target_probs must have vocab >= 1, got shape {tuple(target_probs.shape)}")
    _check_tensor(uniforms, "uniforms", torch.float32, (batch, rows), tree.device)
    if validate:
        _fail_unless(bool(((uniforms >= 0) & (uniforms < 1)).all()), "uniforms must lie in [0, 1)")
    out = _verify_out(tree, out)
    torch.ops.bastion_ext.verify_sample(
        tree.tokens, tree.first_child, tree.next_sibling, target_probs, uniforms, out.accepted_nodes, out.accept_len, out.bonus
    )
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
        _fail_unless(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    torch.ops.bastion_ext.compact_kv(cache, cache_lens, accepted_nodes, accept_len)
    return cache


# Fakes: shape-only versions for torch.compile / meta tensors. The ops return nothing and
# mutate their outputs, so a fake only checks what it can see without data.
@torch.library.register_fake("bastion_ext::build_tree")
def _build_tree_fake(draft_logits, context_lens, budgets, latency_table, accept_scale, k, policy,
                     tokens, parents, depth, positions, scores, n_nodes, ancestor_bits, first_child, next_sibling):  # fmt: skip
    torch._check(draft_logits.dim() == 3, lambda: f"draft_logits must be 3-D [batch, positions, vocab], got shape {tuple(draft_logits.shape)}")
    batch = draft_logits.shape[0]
    max_nodes = tokens.shape[1]
    torch._check(1 <= k <= min(draft_logits.shape[2], MAX_K), lambda: f"k must be in [1, min(vocab, {MAX_K})], got {k}")
    torch._check(policy in POLICIES.values(), lambda: f"policy must be 0, 1 or 2, got {policy}")
    for name, t, shape in (
        ("tokens", tokens, (batch, max_nodes)),
        ("n_nodes", n_nodes, (batch,)),
        ("ancestor_bits", ancestor_bits, (batch, max_nodes, (max_nodes + 31) // 32)),
        ("first_child", first_child, (batch, max_nodes + 1)),
    ):
        torch._check(tuple(t.shape) == shape, lambda: f"{name} must have shape {shape}, got {tuple(t.shape)}")


@torch.library.register_fake("bastion_ext::verify_greedy")
def _verify_greedy_fake(tokens, first_child, next_sibling, target_argmax, accepted_nodes, accept_len, bonus):
    torch._check(
        tuple(target_argmax.shape) == (tokens.shape[0], tokens.shape[1] + 1),
        lambda: f"target_argmax must have shape [batch, max_nodes + 1], got {tuple(target_argmax.shape)}",
    )


@torch.library.register_fake("bastion_ext::verify_sample")
def _verify_sample_fake(tokens, first_child, next_sibling, target_probs, uniforms, accepted_nodes, accept_len, bonus):
    torch._check(
        tuple(uniforms.shape) == (tokens.shape[0], tokens.shape[1] + 1),
        lambda: f"uniforms must have shape [batch, max_nodes + 1], got {tuple(uniforms.shape)}",
    )


@torch.library.register_fake("bastion_ext::compact_kv")
def _compact_kv_fake(cache, cache_lens, accepted_nodes, accept_len):
    torch._check(cache.dim() == 5, lambda: f"cache must be 5-D [stacked, batch, kv_heads, slots, head_dim], got shape {tuple(cache.shape)}")
    batch = cache.shape[1]
    torch._check(tuple(cache_lens.shape) == (batch,), lambda: f"cache_lens must have shape ({batch},), got {tuple(cache_lens.shape)}")
    torch._check(accepted_nodes.dim() == 2 and accepted_nodes.shape[0] == batch,
                 lambda: f"accepted_nodes must have shape ({batch}, *), got {tuple(accepted_nodes.shape)}")
    torch._check(tuple(accept_len.shape) == (batch,), lambda: f"accept_len must have shape ({batch},), got {tuple(accept_len.shape)}")
