"""Tree attention for the verify forward: Triton kernels, a plan per round, an op per layer.

The verify forward runs the root and the ``N`` tree nodes (``M = N + 1`` tokens) through the
target. Each of them sees the request's committed KV cache; among the tree tokens, the root
sees itself only and node ``i`` (verify index ``i + 1``) sees the root, its ancestors and
itself, as the packed ``ancestor_bits`` of ``build_tree`` say (docs/ops.md). No dense mask is
ever materialised: the kernel reads the bit words of the tile it is working on.

Layout of the work. The ``G = H_q / H_kv`` query heads that share a KV head are packed into
the rows of one tile (row ``r`` is verify token ``r // G`` of query head ``kv_head * G + r % G``),
so every K/V tile is read once per KV head and not once per query head. When that leaves too
few programs to fill the GPU (small trees, long caches), the cache is split into chunks that
run in parallel and write partial results (flash-decoding); a second kernel merges them by
their log-sum-exp. The program of the last split starts its softmax from the root's key (every
verify token sees it) and, after its cache chunk, attends to the node keys 64 at a time: the
bits of such a tile are two words per row, a tile without an ancestor of any of its rows is
skipped, and no node past the tile's last verify token is read, since ancestors come before
their descendants in pop order.

Modules: ``kernels`` (the Triton kernels), ``checks`` (argument checks), ``plan`` (tiles,
splits and workspace, once per round), ``op`` (the ``bastion_ext::tree_attention`` op, its fake,
``run_tree_attention`` per layer and the one-call ``tree_attention``). The reference is
``bastion_ext.reference.tree_attention_ref``.
"""

from bastion_ext.attention.op import run_tree_attention, tree_attention
from bastion_ext.attention.plan import LaunchConfig, TreeAttentionPlan, plan_tree_attention

__all__ = ["LaunchConfig", "TreeAttentionPlan", "plan_tree_attention", "run_tree_attention", "tree_attention"]
