"""The ops as the op tests call them: eager, or, with ``BASTION_TEST_TORCH_COMPILE=1``, each
wrapper called inside ``torch.compile(fullgraph=True, dynamic=True)``.

The compiled run traces the wrappers and the ops' fakes (``bastion_ext/fakes.py``) through
Dynamo and AOTAutograd, which functionalizes the ops' in-place outputs, then runs the graph.
Its backend is ``BASTION_TEST_TORCH_COMPILE_BACKEND`` (default ``aot_eager``: Inductor would
only change the code generated around the opaque ops, at several times the compile time for
each of the test cases' shapes). The tests of bad inputs call ``bastion_ext.ops`` eagerly:
under Dynamo an error surfaces wrapped in its own exception types.
"""

import os

import torch

from bastion_ext import ops

COMPILE = os.environ.get("BASTION_TEST_TORCH_COMPILE") == "1"
BACKEND = os.environ.get("BASTION_TEST_TORCH_COMPILE_BACKEND", "aot_eager")

if COMPILE:
    # Random cases bring new sizes and ints (k, max_nodes) that recompile; never fall back to eager.
    torch._dynamo.config.recompile_limit = 1_000_000
    torch._dynamo.config.accumulated_recompile_limit = 1_000_000
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def _as_tested(fn):
    return torch.compile(fn, fullgraph=True, dynamic=True, backend=BACKEND) if COMPILE else fn


build_tree = _as_tested(ops.build_tree)
verify_greedy = _as_tested(ops.verify_greedy)
verify_sample = _as_tested(ops.verify_sample)
compact_kv = _as_tested(ops.compact_kv)
