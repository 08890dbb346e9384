"""The embedded SmolLM2-135M verifies a tree through attn_implementation="bastion_tree" and gets
the logits of the same forward with a dense 4D tree mask through SDPA.

Without CUDA the Triton kernel runs in the interpreter (set before the kernel is imported).
"""

import copy
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import bastion.hf_attention as hf_attention  # noqa: E402
from bastion.hf_attention import ATTN_IMPLEMENTATION, tree_verify_context  # noqa: E402
from bastion_ext.reference import build_tree_ref, tree_verify_mask_ref  # noqa: E402

pytestmark = pytest.mark.model

# fp32 on the CPU: the two paths differ only in summation order, over 30 layers. bf16 on a GPU:
# each path rounds its own way at every layer.
LOGIT_ATOL = {torch.float32: 2e-3, torch.bfloat16: 0.5}


@pytest.fixture
def verify_setup(smollm2):
    """A two-request batch: a prompt prefilled into a DynamicCache, and for each request a tree
    of 12 nodes (different shapes) rooted at the prompt's last token."""
    model, tokenizer = smollm2
    device = model.device
    prompt = tokenizer(["The capital of France is", "Water boils at one hundred"], return_tensors="pt")
    ids = prompt.input_ids
    assert ids.shape[1] >= 3, "both prompts must tokenize to the same length for the batch"
    context_len = ids.shape[1] - 1
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :context_len].to(device), past_key_values=cache, use_cache=True)
    gen = torch.Generator().manual_seed(0)
    tree = build_tree_ref(
        torch.randn(2, 4, 300, generator=gen) * 3, k=3, max_nodes=12, context_lens=[context_len] * 2
    )
    verify_ids = torch.cat([ids[:, context_len:], tree.tokens], dim=1).to(device)
    positions = torch.cat([torch.full((2, 1), context_len), tree.positions], dim=1).to(device)
    return model, cache, tree, verify_ids, positions, context_len


def forward(model, cache, verify_ids, positions, **kwargs):
    with torch.no_grad():
        return model(
            input_ids=verify_ids, position_ids=positions, past_key_values=copy.deepcopy(cache), **kwargs
        ).logits.float()


def test_tree_verify_matches_dense_mask_sdpa(verify_setup):
    model, cache, tree, verify_ids, positions, context_len = verify_setup
    assert model.config._attn_implementation == "sdpa"
    dense = torch.stack([tree_verify_mask_ref(tree.ancestor_bits[b], context_len) for b in range(2)])
    expected = forward(model, cache, verify_ids, positions, attention_mask=dense[:, None].to(model.device))
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        with tree_verify_context(tree.ancestor_bits.to(model.device)):
            got = forward(model, cache, verify_ids, positions)
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL[model.dtype], rtol=0)
    # The tree mask must matter here: a plain causal forward over the same tokens differs.
    causal = forward(model, cache, verify_ids, positions)
    assert (causal - expected).abs().max() > 100 * LOGIT_ATOL[model.dtype]


def test_ordinary_forward_is_sdpa(verify_setup):
    """Outside the tree context, "bastion_tree" is SDPA with the causal mask."""
    model, cache, _, verify_ids, positions, _ = verify_setup
    expected = forward(model, cache, verify_ids, positions)
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        got = forward(model, cache, verify_ids, positions)
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_context_checks_tree_size(verify_setup):
    model, cache, tree, verify_ids, positions, _ = verify_setup
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        with tree_verify_context(tree.ancestor_bits[:, :5].to(model.device)):
            with pytest.raises(ValueError, match="ancestor_bits"):
                forward(model, cache, verify_ids, positions)
    finally:
        model.set_attn_implementation("sdpa")


def test_one_plan_per_forward(verify_setup, monkeypatch):
    """The first layer plans the verify forward's tree attention; every layer runs on that plan."""
    model, cache, tree, verify_ids, positions, _ = verify_setup
    plans, runs = [], []

    def counted(fn, calls):
        def wrapper(*args, **kwargs):
            calls.append(fn(*args, **kwargs))
            return calls[-1]
        return wrapper

    monkeypatch.setattr(hf_attention, "plan_tree_attention", counted(hf_attention.plan_tree_attention, plans))
    monkeypatch.setattr(hf_attention, "run_tree_attention", counted(hf_attention.run_tree_attention, runs))
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        with tree_verify_context(tree.ancestor_bits.to(model.device)) as verify:
            forward(model, cache, verify_ids, positions)
    finally:
        model.set_attn_implementation("sdpa")
    assert len(plans) == 1 and verify.plan is plans[0]
    assert len(runs) == model.config.num_hidden_layers
    assert all(out is plans[0].out for out in runs)
