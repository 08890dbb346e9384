"""Shared test fixtures: markers, the embedded model (loaded once per session)."""

import os
import sys
from pathlib import Path

import pytest
import torch

# The engine package lives under python/; make it importable without an install step.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU, Triton kernels run in its interpreter; set before any test imports triton code.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "model: loads the embedded SmolLM2-135M target")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the embedded target, fp32 on the CPU (bf16 on CUDA if present)."""
    from bastion.models import load_target

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_target(device=device)
