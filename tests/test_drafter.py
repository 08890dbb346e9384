"""The DFlash drafter: published checkpoint format, interface shapes, cache consistency,
loader errors, the training objective and the acceptance measure of ``train-drafter``."""

import json
import types

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from bastion.drafter import DFlashConfig, DFlashDrafter, default_target_layer_ids, load_drafter, select_features
from bastion.engine.layer_features import LayerFeatures
from bastion.engine.target import TargetCache
from bastion.training.evaluate import evaluate
from bastion.training.features import Sequence
from bastion.training.fused_ce import linear_cross_entropy
from bastion.training.loop import load_train_state, save_train_state
from bastion.training.loss import label_weight, position_weights, sequence_loss

VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS, BLOCK = 111, 32, 4, 2, 8, 48, 2, 5
TARGET_LAYER_IDS = [0, 2, 3]


def published_config() -> dict:
    """A config.json shaped like z-lab's Qwen3 DFlash drafters, tiny sizes."""
    return {
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "rope_scaling": None,
        "max_position_embeddings": 40960,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "layer_types": ["full_attention"] * LAYERS,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "block_size": BLOCK,
        "num_target_layers": 4,
        "dflash_config": {"mask_token_id": 7, "target_layer_ids": TARGET_LAYER_IDS},
    }


def published_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the published names and shapes (no embeddings, no lm_head)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"fc.weight": (HIDDEN, len(TARGET_LAYER_IDS) * HIDDEN), "hidden_norm.weight": (HIDDEN,), "norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "self_attn.q_norm.weight": (HEAD_DIM,),
            p + "self_attn.k_norm.weight": (HEAD_DIM,),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    return {name: (0.3 * torch.randn(shape, generator=g)).to(torch.bfloat16) for name, shape in shapes.items()}


def write_published(path, config=None, weights=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or published_config()))
    save_file(weights if weights is not None else published_weights(), path / "model.safetensors")
    return path


@pytest.fixture(scope="module")
def tiny_target():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=4,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=256,
                      initializer_range=0.3)  # logits wide enough for the toy training to fit
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def drafter(tiny_target, tmp_path_factory):
    return DFlashDrafter.from_pretrained(write_published(tmp_path_factory.mktemp("published")), tiny_target)


def features(batch, n, seed=1):
    return torch.randn(batch, n, len(TARGET_LAYER_IDS) * HIDDEN, generator=torch.Generator().manual_seed(seed))


def test_loads_published_format_with_its_names_and_values(drafter, tiny_target):
    weights = published_weights()
    state = drafter.state_dict()
    assert state.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor.float()), name
    assert drafter.block_size == BLOCK and drafter.target_layer_ids == TARGET_LAYER_IDS
    assert drafter.config.mask_token_id == 7 and drafter.config.rope_theta == 1e6
    # Shared, not copied: the target's own modules.
    assert drafter.target.embed_tokens is tiny_target.get_input_embeddings()
    assert drafter.target.lm_head is tiny_target.get_output_embeddings()


def test_draft_shape_dtype_and_determinism(drafter):
    state = drafter.new_state(2)
    drafter.extend(state, features(2, 9), torch.arange(9).expand(2, 9))
    roots, positions = torch.tensor([3, 50]), torch.tensor([9, 9])
    logits = drafter.draft(state, roots, positions)
    assert logits.shape == (2, BLOCK - 1, VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, drafter.draft(state, roots, positions))
    assert not torch.equal(logits[0], logits[1])


def test_incremental_extend_and_batched_anchors_match_draft(drafter):
    """draft after extend (in pieces) equals the one-pass training forward at every root."""
    seq = 14
    feats, positions = features(2, seq, seed=2), torch.arange(seq).expand(2, seq)
    tokens = torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(3))
    anchors = torch.tensor([[2, 8, 13], [5, 6, 11]])
    with torch.no_grad():
        batched = drafter.anchor_logits(feats, positions, tokens, anchors)
    for m in range(anchors.shape[1]):
        for b in range(2):
            a = int(anchors[b, m])
            state = drafter.new_state(1)
            drafter.extend(state, feats[b:b + 1, :a // 2], positions[b:b + 1, :a // 2])
            drafter.extend(state, feats[b:b + 1, a // 2:a], positions[b:b + 1, a // 2:a])
            single = drafter.draft(state, tokens[b:b + 1, a], positions[b:b + 1, a])
            torch.testing.assert_close(single[0], batched[b, m], rtol=1e-5, atol=1e-5)


def test_state_grows_past_its_capacity(drafter):
    state = drafter.new_state(1)
    for start in range(0, 300, 100):
        drafter.extend(state, features(1, 100, seed=start), torch.arange(start, start + 100)[None])
    assert state.bound == 300 and state.lengths.tolist() == [300]
    assert drafter.draft(state, torch.tensor([1]), torch.tensor([300])).shape == (1, BLOCK - 1, VOCAB)


def test_ragged_batch_drafts_as_each_request_alone(drafter):
    """Requests of different context lengths in one state (extend with counts, then a new
    request taking one slot in place) draft what each would draft alone."""
    lengths = [5, 9, 2]
    feats, positions = features(3, 9, seed=7), torch.arange(9).expand(3, 9)
    state = drafter.new_state(3)
    drafter.extend(state, feats, positions, counts=torch.tensor(lengths))
    more = features(3, 4, seed=8)
    extra = torch.tensor([3, 1, 4])
    drafter.extend(state, more, torch.tensor(lengths)[:, None] + torch.arange(4), counts=extra)
    state.set_bound(max(a + b for a, b in zip(lengths, extra.tolist())))
    roots = torch.tensor([4, 5, 6])
    where = torch.tensor(lengths) + extra
    batched = drafter.draft(state, roots, where)
    for b in range(3):
        alone = drafter.new_state(1)
        drafter.extend(alone, feats[b:b + 1, :lengths[b]], positions[b:b + 1, :lengths[b]])
        drafter.extend(alone, more[b:b + 1, :int(extra[b])], lengths[b] + torch.arange(int(extra[b]))[None])
        torch.testing.assert_close(batched[b], drafter.draft(alone, roots[b:b + 1], where[b:b + 1])[0], rtol=1e-5, atol=1e-5)
    keys = state.keys.data_ptr()
    joining = features(1, 6, seed=9)
    drafter.extend(state, joining, torch.arange(6)[None], rows=torch.tensor([1]))
    assert state.keys.data_ptr() == keys and state.lengths.tolist() == [lengths[0] + 3, 6, lengths[2] + 4]
    alone = drafter.new_state(1)
    drafter.extend(alone, joining, torch.arange(6)[None])
    again = drafter.draft(state, roots, torch.tensor([where[0], 6, where[2]]))
    torch.testing.assert_close(again[1], drafter.draft(alone, roots[1:2], torch.tensor([6]))[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again[[0, 2]], batched[[0, 2]], rtol=1e-5, atol=1e-5)


def test_select_features_takes_layer_outputs(tiny_target):
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        hs = tiny_target(ids, output_hidden_states=True).hidden_states
    out = select_features(hs, TARGET_LAYER_IDS)
    assert out.shape == (2, 6, len(TARGET_LAYER_IDS) * HIDDEN)
    assert torch.equal(out[..., :HIDDEN], hs[1]) and torch.equal(out[..., -HIDDEN:], hs[4])
    with pytest.raises(ValueError, match="target_layer_ids"):
        select_features(hs[:3], TARGET_LAYER_IDS)


def test_the_target_catches_the_drafter_layers_as_select_features_takes_them(tiny_target):
    """Hooks on the drafter's layers alone catch transformers' own hidden states, bit for bit
    (the last layer's: the final norm's output), and leave no hook on the shared model; the
    target's prefill and the step after return them."""
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    layers = (2, *TARGET_LAYER_IDS)  # any order, the last layer among them
    with torch.no_grad():
        expected = select_features(tiny_target.model(ids, output_hidden_states=True).hidden_states, layers)
    caught = LayerFeatures(tiny_target, layers)
    hooks = [len(layer._forward_hooks) for layer in tiny_target.model.layers]  # transformers' own, if any
    with torch.no_grad(), caught.catching():
        last = tiny_target.model(ids).last_hidden_state
    assert torch.equal(caught.features(last), expected)
    assert [len(layer._forward_hooks) for layer in tiny_target.model.layers] == hooks
    target = TargetCache(tiny_target, 2, 16, feature_layers=layers)
    _, prefilled = target.prefill(ids[:, :6].tolist())
    _, stepped = target.plain_step(ids[:, 6])
    assert torch.equal(prefilled, expected[:, :6])
    torch.testing.assert_close(stepped, expected[:, 6:], rtol=1e-5, atol=1e-5)  # attention over the cache
    for bad in ((4,), (-1, 0)):
        with pytest.raises(ValueError, match="layer_ids"):
            TargetCache(tiny_target, 1, 8, feature_layers=bad)
    with pytest.raises(ValueError, match="layer_ids"):
        LayerFeatures(tiny_target, ())


def test_config_round_trip_and_default_layers():
    cfg = DFlashConfig.from_dict(published_config())
    assert DFlashConfig.from_dict(cfg.to_dict()) == cfg
    # DFlash's rule for a 36-layer target and a 5-layer drafter (Qwen3-8B-DFlash-b16's sizes).
    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]
    no_ids = published_config()
    no_ids["dflash_config"] = {"mask_token_id": 7}
    assert DFlashConfig.from_dict(no_ids).target_layer_ids == (1, 1)
    llama = published_config() | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    assert DFlashConfig.from_dict(llama).rope_scaling["factor"] == 8.0


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "full-attention"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type"),
    ({"block_size": None}, "block_size"),
])
def test_unsupported_config_is_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        DFlashConfig.from_dict(published_config() | change)


def test_loader_errors_name_the_problem(tmp_path, tiny_target):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_drafter(tmp_path / "nowhere", tiny_target)
    good = write_published(tmp_path / "good")
    data = (good / "model.safetensors").read_bytes()
    truncated = write_published(tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_drafter(truncated, tiny_target)
    garbage = write_published(tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_drafter(garbage, tiny_target)
    weights = published_weights()
    del weights["fc.weight"]
    with pytest.raises(ValueError, match="missing .*fc.weight"):
        load_drafter(write_published(tmp_path / "missing", weights=weights), tiny_target)
    wrong = published_weights()
    wrong["norm.weight"] = torch.ones(HIDDEN + 1)
    with pytest.raises(ValueError, match="norm.weight"):
        load_drafter(write_published(tmp_path / "wrong", weights=wrong), tiny_target)
    big_vocab = write_published(tmp_path / "vocab", config=published_config() | {"vocab_size": VOCAB + 1})
    with pytest.raises(ValueError, match="embeddings"):
        load_drafter(big_vocab, tiny_target)


def test_save_pretrained_round_trips(drafter, tiny_target, tmp_path):
    drafter.save_pretrained(tmp_path / "saved", dtype=torch.bfloat16)
    stored = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert stored["architectures"] == ["DFlashDraftModel"] and stored["dflash_config"]["target_layer_ids"] == TARGET_LAYER_IDS
    again = load_drafter(tmp_path / "saved", tiny_target)
    for name, tensor in drafter.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def toy_sequence(seed=0, length=40, prompt_len=10):
    # A learnable toy rule: the target's next token is a fixed function of the current one.
    tokens = torch.empty(length, dtype=torch.int64)
    tokens[0] = seed
    for i in range(1, length):
        tokens[i] = (tokens[i - 1] * 7 + 3) % VOCAB
    targets = (tokens * 7 + 3) % VOCAB
    topk_ids = torch.stack([targets, (targets + 1) % VOCAB], dim=1)  # a teacher that is 88% sure
    return Sequence(tokens, features(1, length, seed)[0].half(), targets, prompt_len, topk_ids, torch.tensor([[2.0, 0.0]]).expand(length, 2))


def test_a_few_training_steps_lower_the_loss(tiny_target, tmp_path):
    torch.manual_seed(0)
    cfg = DFlashConfig.from_dict(published_config())
    model = DFlashDrafter(cfg, tiny_target.get_input_embeddings(), tiny_target.get_output_embeddings())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seq, weights = toy_sequence(), position_weights(BLOCK, 0.8)
    total = label_weight(model, seq, weights)
    embed_before = tiny_target.get_input_embeddings().weight.detach().clone()
    tiny_target.requires_grad_(False)
    first = sequence_loss(model, seq, weights)[0].item() / total
    for _ in range(40):
        opt.zero_grad()
        (sequence_loss(model, seq, weights, soft=0.5)[0] / total).backward()
        opt.step()
    assert sequence_loss(model, seq, weights)[0].item() / total < 0.5 * first
    # The shared embeddings are the target's: not among the drafter's parameters, never updated.
    assert torch.equal(tiny_target.get_input_embeddings().weight, embed_before)
    assert not any(p is tiny_target.get_input_embeddings().weight for p in model.parameters())
    # The resumable state restores parameters and optimizer moments exactly, and refuses another run's settings.
    save_train_state(tmp_path, model, opt, 40, [first], {"layers": 2})
    fresh = DFlashDrafter(cfg, tiny_target.get_input_embeddings(), tiny_target.get_output_embeddings())
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert load_train_state(tmp_path, fresh, fresh_opt, {"layers": 2}) == (40, [first])
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
        assert torch.equal(opt.state[p]["exp_avg"], fresh_opt.state[q]["exp_avg"]), name
    with pytest.raises(ValueError, match="layers=2"):
        load_train_state(tmp_path, fresh, fresh_opt, {"layers": 3})


@pytest.mark.parametrize("soft", [0.0, 0.3, 1.0])
def test_fused_cross_entropy_matches_autograd(soft):
    """Loss and input gradient of the fused lm_head cross-entropy equal plain autograd's, with
    rows without a hard label, soft labels summing below one, and chunking across rows."""
    g = torch.Generator().manual_seed(1)
    n, h, v, k = 37, 16, 111, 5
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::7] = -100
    row_w = torch.rand(n, generator=g, dtype=torch.float64)
    ids = torch.randint(0, v, (n, k), generator=g)
    probs = torch.rand(n, k, generator=g, dtype=torch.float64).softmax(-1) * 0.9
    logp = (hidden @ weight.T).log_softmax(-1)
    hard = torch.where(labels >= 0, -logp.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0.0)
    want = ((1 - soft) * hard - soft * (probs * logp.gather(1, ids)).sum(-1)) * row_w
    want.sum().backward()
    want_grad, hidden.grad = hidden.grad.clone(), None
    import bastion.training.fused_ce as fused
    chunk, fused.CHUNK_ROWS = fused.CHUNK_ROWS, 8
    try:
        got, hits = linear_cross_entropy(hidden, weight, labels, row_w.float(), ids, probs.float(), soft)
    finally:
        fused.CHUNK_ROWS = chunk
    (2 * got).backward()
    torch.testing.assert_close(got.double(), want.sum(), rtol=1e-5, atol=1e-6)  # losses add up in fp32
    torch.testing.assert_close(hidden.grad, 2 * want_grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(hits, (labels >= 0) & (logp.argmax(-1) == labels))


def test_folded_feature_scale_equals_scaled_features(drafter):
    feats, positions = features(1, 12, seed=4), torch.arange(12)[None]
    tokens, anchors = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(5)), torch.tensor([[3, 7, 11]])
    scale = torch.rand(feats.shape[-1], generator=torch.Generator().manual_seed(6)) + 0.5
    with torch.no_grad():
        scaled = drafter.anchor_logits(feats * scale, positions, tokens, anchors)
        drafter.fold_feature_scale(scale)
        folded = drafter.anchor_logits(feats, positions, tokens, anchors)
    torch.testing.assert_close(folded, scaled, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        drafter.fold_feature_scale(torch.ones(3))


def oracle_drafter(correct_depth: int):
    """A stand-in whose argmax is the target's true token for the first ``correct_depth``
    positions of every block and wrong after."""

    def anchor_logits(feats, positions, tokens, anchors):
        seq_targets = oracle_drafter.targets
        idx = anchors[0][:, None] + torch.arange(BLOCK - 1)
        truth = seq_targets[idx.clamp(max=len(seq_targets) - 1)]
        wrong = (truth + 1) % VOCAB
        chosen = torch.where(torch.arange(BLOCK - 1) < correct_depth, truth, wrong)
        return torch.nn.functional.one_hot(chosen, VOCAB).float()[None] * 10

    return types.SimpleNamespace(block_size=BLOCK, fc=types.SimpleNamespace(weight=torch.zeros(1)), anchor_logits=anchor_logits,
                                 to_draft_ids=lambda ids, missing=-100: ids, draft_vocab_size=VOCAB)


@pytest.mark.parametrize("depth", [0, 2, BLOCK - 1])
def test_evaluate_walks_rounds_like_the_engine(depth):
    seq = toy_sequence(length=60, prompt_len=8)
    oracle_drafter.targets = seq.targets
    result = evaluate(oracle_drafter(depth), [seq], tree_budgets=(6,), tree_width=2)
    # Every round commits depth accepted + 1 tokens, and so does a tree holding the path.
    assert result["dflash_tokens_per_round"] == depth + 1
    assert result["tree6_tokens_per_round"] >= depth + 1
    assert result["top1_by_position"] == [1.0] * depth + [0.0] * (BLOCK - 1 - depth)


@pytest.mark.model
def test_committed_default_drafter_drafts_for_the_embedded_target(smollm2):
    """The shipped weights load for SmolLM2 and, fed the target's features, draft (mostly) the
    target's own greedy next tokens for a simple prompt."""
    model, tokenizer = smollm2
    drafter = load_drafter(None, model)
    assert drafter.config.vocab_size == model.config.vocab_size
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Count from 1 to 20."}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=model.device)
    greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    with torch.no_grad():
        out = model(greedy, output_hidden_states=True)
    prompt_len, hits = ids.shape[1], 0
    for root in range(prompt_len, prompt_len + 16):
        state = drafter.new_state(1)
        drafter.extend(state, select_features(out.hidden_states, drafter.target_layer_ids)[:, :root], torch.arange(root, device=model.device)[None])
        logits = drafter.draft(state, greedy[:, root], torch.tensor([root], device=model.device))
        assert logits.shape == (1, drafter.block_size - 1, drafter.draft_vocab_size) and logits.dtype == torch.float32
        hits += int(drafter.to_target_ids(logits[0, 0].argmax()) == out.logits[0, root].argmax())
    # Held-out first-position top-1 is well above this (weights/RECIPE.md); a random drafter scores ~0.
    assert hits >= 3
