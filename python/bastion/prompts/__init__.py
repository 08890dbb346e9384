"""The project's documented prompt sets (see README.md here): ``train`` for distilling the
drafter, ``eval`` (disjoint) for held-out acceptance and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

SPLITS = ("train", "eval")
CATEGORIES = ("math", "code", "chat")
_HERE = Path(__file__).resolve().parent


def load_prompts(split: str, category: str | None = None) -> list[dict]:
    """Rows ``{"id", "category", "prompt"}`` of one split, optionally one category only.

    split: "train" or "eval". category: "math", "code", "chat" or None for all, in file order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES} or None, got {category!r}")
    with open(_HERE / f"{split}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if category is None or r["category"] == category]
