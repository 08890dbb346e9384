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


TEST_MODEL = os.environ.get("BASTION_TEST_MODEL")  # None: the embedded SmolLM2 GGUF


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
    """(model, tokenizer) of the embedded target, fp32 on the CPU (bf16 on CUDA if present).
    BASTION_TEST_MODEL: a path to load instead (the GPU machine, where the GGUF travels apart)."""
    from bastion.models import load_target

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_target(TEST_MODEL, device=device)


@pytest.fixture
def embedded(monkeypatch, smollm2):
    """Make ``bastion.models.load_target()`` of the embedded model (path None) return the
    session's model: code that loads it (the CLI, the README's example) runs without a second
    load. Other paths load as usual."""
    import bastion.models

    real = bastion.models.load_target
    monkeypatch.setattr(bastion.models, "load_target", lambda path=None, **kw: smollm2 if path is None else real(path, **kw))
    return smollm2


def chat_ids(tokenizer, text):
    """Prompt token ids of one user turn through the chat template."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="session")
def cpu_latency(smollm2):
    """A plausible 2-core-CPU roofline (not a calibration: losslessness needs no accuracy)."""
    from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel

    spec = ModelSpec.from_hf_config(smollm2[0].config, element_bytes=4)
    return LatencyModel(RooflineModel(spec, peak_flops=2e11, bandwidth=1e10, overhead=0.03), draft_seconds=0.01)


# Held-out prompts per category and new tokens of the lossless tests: 3 x 32 in the suite,
# the full 7 x 64 (21 prompts, issue 4's bar) with BASTION_TEST_FULL=1 (the GPU script's run).
FULL = os.environ.get("BASTION_TEST_FULL") == "1"
EVAL_PER_CATEGORY = 7 if FULL else 3
EVAL_TOKENS = 64 if FULL else 32


@pytest.fixture(scope="session")
def eval_ar_outputs(smollm2):
    """The batch-1 ar reference on held-out prompts of every category: (prompt ids,
    EVAL_TOKENS greedy tokens) each, categories in turn."""
    from bastion.engine import GenerationConfig, generate
    from bastion.prompts import CATEGORIES, load_prompts

    model, tokenizer = smollm2
    by_category = [load_prompts("eval", c)[:EVAL_PER_CATEGORY] for c in CATEGORIES]
    rows = [r for group in zip(*by_category) for r in group]
    outs = []
    for row in rows:
        ids = chat_ids(tokenizer, row["prompt"])
        config = GenerationConfig(strategy="ar", max_new_tokens=EVAL_TOKENS, stop_on_eos=False)
        outs.append((ids, generate(model, ids, config).tokens))
    return outs
