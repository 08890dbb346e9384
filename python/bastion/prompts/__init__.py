"""The project's documented prompt sets (see README.md here): ``train`` for distilling the
drafter (the hand-written ``train.jsonl`` plus the rows ``synth.compose`` builds, never
shipped as a file), ``eval`` (disjoint) for held-out acceptance and benchmarks; and any user
file of the same form."""

from __future__ import annotations

import json
import os
from pathlib import Path

SPLITS = ("train", "eval")
CATEGORIES = ("math", "code", "chat")  # the eval set's categories (bench's defaults)
_HERE = Path(__file__).resolve().parent
_FILES = {"train": ("train.jsonl",), "eval": ("eval.jsonl",)}


def load_prompt_file(path: str | os.PathLike, default_category: str = "custom") -> list[dict]:
    """Rows of a JSONL prompt file: one object per line with ``prompt`` (required), optional
    ``category`` (default ``default_category``) and ``id`` (default ``<stem>-<line>``); each
    row also gets its ``line`` number. ValueError naming the file and line for a malformed
    line (invalid UTF-8 included)."""
    path = Path(path)
    rows = []
    # Decoded line by line (not by a text-mode file) so that bad UTF-8 names its line.
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{number}: not UTF-8 text (byte {err.start + 1} of the line)") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ValueError(f"{path}:{number}: each line needs a non-empty string \"prompt\"")
        row.setdefault("category", default_category)
        row.setdefault("id", f"{path.stem}-{number:05d}")
        row["line"] = number
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def load_prompts(split: str, category: str | None = None) -> list[dict]:
    """Rows ``{"id", "category", "prompt"}`` (multi-turn training rows also ``follow_up``) of
    one split, optionally one category only, in file order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rows = [r for name in _FILES[split] for r in load_prompt_file(_HERE / name)]
    if split == "train":
        from .synth import compose

        rows += compose()
    if category is not None and category not in {r["category"] for r in rows}:
        raise ValueError(f"category {category!r} is not in the {split} prompts")
    return [r for r in rows if category is None or r["category"] == category]
