"""Reading and writing drafter checkpoints in the published DFlash layout: a directory with
``config.json`` and ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``).
Safetensors only: nothing here unpickles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import DFlashConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"drafter weights file {str(path)!r} does not exist")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"drafter weights file {str(path)!r} is not a valid safetensors file (corrupt or truncated?): {err}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[DFlashConfig, dict[str, torch.Tensor]]:
    """Config and tensors of the drafter checkpoint directory ``path``.

    Raises FileNotFoundError when the directory or a file is missing and ValueError when a
    file cannot be parsed.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"drafter path {str(root)!r} is not a directory")
    if not (root / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"drafter path {str(root)!r} has no {CONFIG_FILE}")
    config = DFlashConfig.from_dict(_read_json(root / CONFIG_FILE))
    if (root / INDEX_FILE).is_file():
        shards = sorted(set(_read_json(root / INDEX_FILE).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{root / INDEX_FILE} lists no weight files")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_safetensors(root / shard))
    else:
        tensors = _read_safetensors(root / WEIGHTS_FILE)
    return config, tensors


def write_checkpoint(path: str | os.PathLike, config: DFlashConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into directory ``path`` (created if
    needed); the tensors are stored as given (contiguous, on the CPU)."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2)
        f.write("\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, root / WEIGHTS_FILE, metadata={"format": "pt"})
    return root
