"""Counting the ways a tensor's value reaches Python during a generation (the engine's
promise: one host read per round)."""

import sys
from pathlib import Path

import torch

import bastion_ext.latency

# The latency model's arithmetic runs on host-side CPU tensors on every device (the policy
# plans from the host's context lengths), so it never waits for the device: not counted.
_HOST_MODEL = str(Path(bastion_ext.latency.__file__).parent)


def count_host_reads(monkeypatch) -> list[str]:
    """Patch every Tensor method that hands a value to Python; returns the list each call
    outside the latency model appends its name to (until ``monkeypatch.undo()``)."""
    reads = []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and not frame.f_code.co_filename.startswith(_HOST_MODEL):
                frame = frame.f_back
            if frame is None:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads
