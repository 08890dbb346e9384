"""Where bastion keeps what it computed once for this machine (latency calibrations, the
embedded model converted out of its GGUF): ``$XDG_CACHE_HOME/bastion`` (~/.cache/bastion)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached file, e.g. ``cache_dir("latency")`` (not created)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bastion" / kind
