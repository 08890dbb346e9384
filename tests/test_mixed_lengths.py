"""Prompts of different lengths decode together without reading memory nobody wrote (issue
19, finding 1): with every Python-side ``torch.empty`` poisoned with NaN, a ragged batch (1 to
~200 tokens; 64 in bf16 on a CPU without fast bf16) decodes with every strategy in fp32 and bf16 without error, and in fp32 each
request's tokens are its batch-1 ar's."""

import copy

import pytest
import torch

from conftest import chat_ids

from bastion.engine import STRATEGIES, GenerationConfig, generate, generate_batch

TOKENS = 6


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / empty_like / Tensor.new_empty return NaN-filled floats, so that a read of
    an unwritten slot shows up in the output instead of depending on what memory held."""
    def poisoned(original):
        def make(*args, **kwargs):
            t = original(*args, **kwargs)
            return t.fill_(float("nan")) if t.is_floating_point() else t
        return make

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))


@pytest.mark.model
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_ragged_batch_reads_no_unwritten_memory(smollm2, cpu_latency, nan_empty, dtype):
    from bastion.drafter import load_drafter
    from bastion.dtypes import cpu_has_fast_bf16

    model, tokenizer = smollm2
    if dtype != model.dtype:
        model = copy.deepcopy(model).to(dtype)
    drafter = load_drafter(None, model)
    exact = dtype == torch.float32  # bf16 rounds batched and single forwards differently
    # bf16 runs at batch 4 only (it holds every length), and on CPUs without AMX or AVX512-BF16
    # (a 4 x 200-token bf16 prefill took 11.6 s on an AMD EPYC) with a shorter long prompt.
    chat = chat_ids(tokenizer, "Write a haiku about rain, with vivid imagery and a surprising last line.")
    long = tokenizer("The rain falls softly on the old stone bridge. " * 20, add_special_tokens=False)["input_ids"]
    long = long[:200 if exact or cpu_has_fast_bf16() else 64]
    prompts = [chat, chat[:1], long, tokenizer("Hello", add_special_tokens=False)["input_ids"]]
    ar = GenerationConfig(strategy="ar", max_new_tokens=TOKENS, stop_on_eos=False)
    singles = [generate(model, p, ar).tokens for p in prompts] if exact else None
    for strategy in STRATEGIES:
        config = GenerationConfig(strategy=strategy, max_new_tokens=TOKENS, stop_on_eos=False, budget=8)
        for batch in (2, 4) if exact else (4,):
            results = generate_batch(model, prompts[:batch], config, drafter=drafter, latency=cpu_latency)
            assert all(len(r.tokens) == TOKENS for r in results), f"{strategy} at batch {batch}"
            if exact:
                assert [r.tokens for r in results] == singles[:batch], f"{strategy} at batch {batch}"
