"""bastion_ext: budget-aware draft-tree speculative decoding (tree building, verification).

The compiled ops (``bastion_ext.ops``, backed by ``bastion_ext._C``) load on first use, so
the pure-Python modules (``reference``, ``tree``, ``latency``, ``policy``, ``attention``)
import even where the extension has not been built.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "build_tree": "bastion_ext.ops",
    "verify_greedy": "bastion_ext.ops",
    "verify_sample": "bastion_ext.ops",
    "compact_kv": "bastion_ext.ops",
    "DraftTree": "bastion_ext.tree",
    "VerifyResult": "bastion_ext.tree",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion_ext' has no attribute {name!r}")
