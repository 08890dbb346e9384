"""Property test over the tree ops' inputs (issue 19): whatever arrives, ``build_tree``,
``verify_greedy`` and ``verify_sample`` either raise a ``ValueError`` that starts with the
name of an argument, or return the reference's tree / walk (and the tree its invariants);
never another exception, never a silently different result."""

import math
import re

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tree_cases import assert_same_tree, assert_same_walk, assert_tree_invariants

from bastion_ext import ops
from bastion_ext.reference import build_tree_ref, verify_greedy_ref, verify_sample_ref

NAMED = re.compile(r"^(draft_logits|k|max_nodes|policy|budgets|latency_table|accept_scale|context_lens"
                   r"|target_argmax|target_probs|uniforms)\b")
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0])


def _rarely(draw) -> bool:
    """True about one time in ten: each argument is usually valid, so most calls get to the
    walks. (Not ``== 0``: hypothesis favours the simplest value, 0, well beyond its share.)"""
    return draw(st.integers(0, 9)) == 9


def _per_request(draw, batch, good, bad):
    """None, or a list of ``batch`` values of ``good`` (rarely one of ``bad``, or one too many)."""
    if draw(st.booleans()):
        return None
    values = draw(st.lists(good, min_size=batch, max_size=batch))
    if _rarely(draw):
        values[draw(st.integers(0, batch - 1))] = draw(bad)
    return values + [values[0]] if _rarely(draw) else values


def _float_tensor(draw, shape, good):
    """A float32 tensor of ``good`` values, rarely with one odd entry."""
    count = math.prod(shape)
    values = draw(st.lists(good, min_size=count, max_size=count))
    if count and _rarely(draw):
        values[draw(st.integers(0, count - 1))] = draw(ODD_FLOATS)
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


@st.composite
def build_tree_args(draw):
    batch, positions, vocab = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 12))
    logits = _float_tensor(draw, (batch, positions, vocab), st.floats(-8, 8)).to(
        draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])))
    k = draw(st.sampled_from([-1, 0, 65, True, 2.0]) if _rarely(draw) else st.integers(1, vocab))
    max_nodes = draw(st.sampled_from([-1, 0, 4097, True]) if _rarely(draw) else st.integers(1, 24))
    policy = draw(st.sampled_from(["fixed", "greedy_stop", "argmax"] if not _rarely(draw) else ["best"]))
    nodes = max_nodes if type(max_nodes) is int and 1 <= max_nodes <= 24 else 4
    latency = None
    if policy != "fixed" or draw(st.integers(0, 9)) == 0:
        latency = _float_tensor(draw, (draw(st.sampled_from([1, batch])), nodes), st.floats(0.01, 10))
    scale = _float_tensor(draw, (batch,), st.floats(0, 3)) if draw(st.booleans()) else None
    budgets = _per_request(draw, batch, st.integers(1, nodes), st.sampled_from([-1, 0, nodes + 1, 8.5, True]))
    context = _per_request(draw, batch, st.integers(0, 1000) | st.just(2**62), st.sampled_from([-2, 2**62 + 1, 2**63 - 1, 2**64]))
    return logits, k, max_nodes, dict(policy=policy, budgets=budgets, latency_table=latency, accept_scale=scale,
                                       context_lens=context)


def _rejected_by_name(call):
    """The call's result, or None if it raised a ValueError naming an argument."""
    try:
        result = call()
    except ValueError as err:
        assert NAMED.match(str(err)), f"ValueError not naming an argument: {err}"
        event(f"rejected: {NAMED.match(str(err)).group(1)}")
        return None
    event("accepted")
    return result


@SETTINGS
@given(args=build_tree_args(), data=st.data())
def test_tree_ops_return_the_reference_or_name_the_bad_argument(args, data):
    logits, k, max_nodes, kwargs = args
    tree = _rejected_by_name(lambda: ops.build_tree(logits, k, max_nodes, **kwargs))
    if tree is None:
        return
    batch = logits.shape[0]
    assert_same_tree(tree, build_tree_ref(logits, k, max_nodes, **kwargs))
    assert_tree_invariants(tree, kwargs["budgets"] or [max_nodes] * batch, kwargs["context_lens"] or [0] * batch)

    rows, vocab = max_nodes + 1, logits.shape[2]
    # Targets drawn from the tree's own tokens (so walks go deep) and a few bad ids.
    tokens = sorted(set(tree.tokens[tree.tokens >= 0].tolist()))
    target = torch.tensor(data.draw(st.lists(st.sampled_from(tokens) | st.integers(-3, vocab + 2),
                                             min_size=batch * rows, max_size=batch * rows))).reshape(batch, rows)
    walk = _rejected_by_name(lambda: ops.verify_greedy(tree, target))
    if walk is not None:
        assert_same_walk(walk, verify_greedy_ref(tree, target))

    weights = _float_tensor(data.draw, (batch, rows, vocab), st.floats(0, 4))
    probs = weights / weights.sum(-1, keepdim=True) if data.draw(st.booleans()) else weights
    uniforms = _float_tensor(data.draw, (batch, rows), st.floats(0, 1, exclude_max=True))
    walk = _rejected_by_name(lambda: ops.verify_sample(tree, probs, uniforms))
    if walk is not None:
        assert_same_walk(walk, verify_sample_ref(tree, probs, uniforms))
