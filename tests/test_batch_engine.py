"""The engine on batches: each request's output equals its own batch-1 ``ar`` (T=0, every
strategy, batch 4 and 8, the committed drafter), requests that finish early leave the batch,
one host read per round, and sample-and-match's distributions at batch 4 on ragged prompts."""

import pytest
import torch
from test_engine import CHI2_999, _chi_square

from host_reads import count_host_reads
from conftest import EVAL_TOKENS

from bastion.drafter.oracle import OracleDrafter
from bastion.engine import GenerationConfig, generate_batch
from bastion.engine.strategies import STRATEGIES

BATCH_TOKENS = EVAL_TOKENS


@pytest.mark.model
@pytest.mark.parametrize("strategy, batch", [(s, 8) for s in STRATEGIES] + [("bastion", 4)])
def test_batches_equal_batch1_ar(smollm2, eval_ar_outputs, cpu_latency, strategy, batch):
    """The held-out prompts (9, or 21 with BASTION_TEST_FULL=1), of different lengths, decoded
    in batches with the committed drafter: every request's tokens are its own batch-1 ar's."""
    from bastion.drafter import load_drafter

    model, _ = smollm2
    drafter = load_drafter(None, model)
    cases = eval_ar_outputs
    assert len(cases) >= 8 and len({len(ids) for ids, _ in cases}) > 1, "at least 8 prompts, of different lengths"
    # A 16-node cap keeps the verify forwards short here; the trees still branch and go deep.
    config = GenerationConfig(strategy=strategy, max_new_tokens=BATCH_TOKENS, stop_on_eos=False, budget=16)
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        results = generate_batch(model, [ids for ids, _ in chunk], config, drafter=drafter, latency=cpu_latency)
        for i, ((_, expected), result) in enumerate(zip(chunk, results)):
            assert result.tokens == expected[:BATCH_TOKENS], f"request {start + i} at batch {batch}"


@pytest.mark.model
def test_finished_requests_leave_the_batch(smollm2, eval_ar_outputs, cpu_latency):
    """An EOS token that ends requests at different rounds: each output is its batch-1 ar output
    cut at its first EOS, and the others go on to the limit."""
    model, _ = smollm2
    cases = eval_ar_outputs[:4]
    eos = cases[0][1][3]  # ends request 0 early; may end others too
    drafter = OracleDrafter([ids + expected for ids, expected in cases], model.config.vocab_size)
    config = GenerationConfig(strategy="bastion", max_new_tokens=BATCH_TOKENS)
    results = generate_batch(model, [ids for ids, _ in cases], config, drafter=drafter, latency=cpu_latency, eos_token_ids=(eos,))
    lengths = []
    for (_, expected), result in zip(cases, results):
        expected = expected[:BATCH_TOKENS]
        cut = expected[: expected.index(eos) + 1] if eos in expected else expected
        assert result.tokens == cut
        lengths.append(len(result.rounds))
    assert lengths[0] < max(lengths), "request 0 must leave before the others finish"


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["ddtree", "bastion"])
def test_one_host_read_per_round(smollm2, eval_ar_outputs, cpu_latency, strategy, monkeypatch):
    """Every way a tensor's value reaches Python is counted during a batched generation: one
    per round, plus the read that finds every request finished. The latency model's own
    arithmetic is left out: it runs on host-side CPU tensors on every device (the policy plans
    from the host's context lengths), so it never waits for the device."""
    from bastion.drafter import load_drafter

    model, _ = smollm2
    drafter = load_drafter(None, model)
    cases = eval_ar_outputs[:4]
    reads = count_host_reads(monkeypatch)
    config = GenerationConfig(strategy=strategy, max_new_tokens=16, stop_on_eos=False)
    results = generate_batch(model, [ids for ids, _ in cases], config, drafter=drafter, latency=cpu_latency)
    monkeypatch.undo()
    rounds = max(len(r.rounds) for r in results)
    assert len(reads) == rounds + 1, f"{len(reads)} host reads in {rounds} rounds: {sorted(set(reads))}"
    for (_, expected), result in zip(cases, results):
        assert result.tokens == expected[:16]


def tiny_llama(vocab=6, hidden=16):
    """A random two-layer Llama (two query heads, one KV head of hidden / 2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper than the initialisation's near-uniform logits
        model.lm_head.weight.mul_(60)
    return model


def exact_token_distributions(model, prompt, steps, temperature):
    """P(new token t) for t = 1..steps, marginalised over the earlier new tokens: (steps, V)."""
    vocab = model.config.vocab_size
    prefixes = {(): 1.0}
    out = []
    with torch.no_grad():
        for _ in range(steps):
            marginal = torch.zeros(vocab, dtype=torch.float64)
            grown = {}
            for prefix, weight in prefixes.items():
                logits = model(input_ids=torch.tensor([prompt + list(prefix)])).logits[0, -1]
                probs = torch.softmax(logits.double() / temperature, -1)
                marginal += weight * probs
                for token in range(vocab):
                    grown[prefix + (token,)] = weight * float(probs[token])
            prefixes = grown
            out.append(marginal)
    return torch.stack(out)


@pytest.mark.parametrize("strategy", ["ddtree", "bastion"])
def test_sampling_at_batch_4_reproduces_the_target(strategy):
    """T = 1 on a tiny random Llama, 4 prompts of different lengths decoded together, a
    drafter of noise (so trees accept by chance, deep and wide): the 1st, 2nd and 3rd new
    tokens of every request follow the target's exact marginals (chi-square, p = 0.001)."""
    from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel

    model = tiny_llama()
    vocab, steps, trials = model.config.vocab_size, 3, 300
    prompts = [[1, 2], [3, 1, 4, 1, 5], [2], [5, 4, 3, 2, 1, 0, 1]]
    latency = LatencyModel(RooflineModel(ModelSpec.from_hf_config(model.config, element_bytes=4), peak_flops=1e9, bandwidth=1e9, overhead=1e-3), draft_seconds=1e-4)
    counts = torch.zeros((len(prompts), steps, vocab))
    for seed in range(trials):
        drafter = OracleDrafter([[] for _ in prompts], vocab, block_size=4, seed=seed)
        config = GenerationConfig(strategy=strategy, max_new_tokens=steps, temperature=1.0, seed=seed, topk=3, budget=6, stop_on_eos=False)
        for b, result in enumerate(generate_batch(model, prompts, config, drafter=drafter, latency=latency)):
            for step, token in enumerate(result.tokens):
                counts[b, step, token] += 1
    for b, prompt in enumerate(prompts):
        exact = exact_token_distributions(model, prompt, steps, 1.0)
        for step in range(steps):
            stat, dof = _chi_square(counts[b, step], exact[step].float())
            assert stat < CHI2_999[dof], (b, step, counts[b, step], exact[step])


def test_tree_attention_verify_equals_the_mask_path():
    """The verify forward of a ragged batch through the Triton ``bastion_tree`` attention
    (reading the packed ancestor bits; the interpreter on a CPU) gives the logits of the
    additive-mask path."""
    import bastion.hf_attention  # noqa: F401  (registers "bastion_tree")
    from bastion_ext import ops

    from bastion.engine.target import TargetCache

    model = tiny_llama(vocab=50, hidden=128)  # head_dim 64: a size the kernel takes
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    tree = ops.build_tree(torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0)), 3, 8,
                          context_lens=[len(p) for p in prompts], budgets=[8, 5])
    n = int(tree.n_nodes.max())
    logits = {}
    for attn in ("sdpa", "bastion_tree"):
        model.set_attn_implementation(attn)
        target = TargetCache(model, batch=2, capacity=32)
        target.prefill(prompts)
        logits[attn], _ = target.verify(tree, torch.tensor([11, 12]), n)
    model.set_attn_implementation("sdpa")
    real = torch.arange(n + 1) <= tree.n_nodes[:, None]  # padding rows may differ: nothing reads them
    torch.testing.assert_close(logits["bastion_tree"][real], logits["sdpa"][real], rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("batch", [1, 4])
def test_cuda_engine_every_strategy_equals_ar(eval_ar_outputs, batch):
    """The engine on CUDA (fp32 weights, tree verifies through the Triton ``bastion_tree``
    attention): every strategy at batch 1 and 4, and with 2 slots that requests join, gives
    ar's tokens, or parts from them only at a near-tie of the target's logits (the kernel's
    reduction order differs from SDPA's)."""
    from bastion_ext.latency import LatencyModel, ModelSpec, RooflineModel

    from bastion.drafter import load_drafter
    from bastion.engine.divergence import first_divergence
    from bastion.models import load_target

    from conftest import TEST_MODEL

    model, _ = load_target(TEST_MODEL, device="cuda", dtype=torch.float32)
    drafter = load_drafter(None, model)
    latency = LatencyModel(RooflineModel(ModelSpec.from_hf_config(model.config, element_bytes=4), peak_flops=1e14,
                                         bandwidth=2e12, overhead=2e-3), draft_seconds=1e-3)
    cases = eval_ar_outputs[:4]
    prompts = [ids for ids, _ in cases]
    ar = generate_batch(model, prompts, GenerationConfig(strategy="ar", max_new_tokens=BATCH_TOKENS, stop_on_eos=False))
    for strategy in STRATEGIES:
        config = GenerationConfig(strategy=strategy, max_new_tokens=BATCH_TOKENS, stop_on_eos=False)
        chunks = [(start, generate_batch(model, prompts[start:start + batch], config, drafter=drafter, latency=latency))
                  for start in range(0, len(prompts), batch)]
        if batch > 1:  # and with requests joining: half the slots, a waiting prompt takes a freed one
            chunks.append((0, generate_batch(model, prompts, config, drafter=drafter, latency=latency, batch_size=batch // 2)))
        for start, results in chunks:
            for i, result in enumerate(results, start):
                if result.tokens != ar[i].tokens:
                    divergence = first_divergence(model, prompts[i], ar[i].tokens, result.tokens)
                    assert divergence is not None and divergence.near_tie, (strategy, i, divergence.describe(model.dtype))
