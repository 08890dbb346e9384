"""The reduced draft vocabulary: the drafter scores only some target tokens (the lm_head's
rows of ``draft_vocab_ids``), maps its indices back to target ids, saves and reloads them, and
the engine's trees carry target ids."""

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bastion.drafter import DFlashConfig, DFlashDrafter, load_drafter
from bastion.training.features import Sequence
from bastion.training.init import frequent_tokens

VOCAB, HIDDEN = 97, 32


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def config(draft_vocab_size=None) -> DFlashConfig:
    return DFlashConfig(hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, block_size=4, mask_token_id=5,
                        target_layer_ids=(0, 2), num_target_layers=3, draft_vocab_size=draft_vocab_size)


def drafted(drafter):
    state = drafter.new_state(1)
    feats = torch.randn(1, 6, 2 * HIDDEN, generator=torch.Generator().manual_seed(1))
    drafter.extend(state, feats, torch.arange(6)[None])
    return drafter.draft(state, torch.tensor([3]), torch.tensor([6]))


def test_reduced_logits_are_the_full_logits_of_the_chosen_tokens(target):
    torch.manual_seed(0)
    full = DFlashDrafter(config(), target.get_input_embeddings(), target.get_output_embeddings())
    ids = torch.tensor([0, 2, 5, 17, 40, 96])
    reduced = DFlashDrafter(config(len(ids)), target.get_input_embeddings(), target.get_output_embeddings())
    reduced.load_state_dict({**full.state_dict(), "draft_vocab_ids": torch.arange(len(ids))})
    reduced.set_draft_vocab(ids)
    with torch.no_grad():
        a, b = drafted(full), drafted(reduced)
    assert b.shape == (1, 3, len(ids))
    torch.testing.assert_close(b, a[..., ids])
    # Index <-> id maps, padding kept, unknown ids missing.
    assert reduced.to_target_ids(torch.tensor([[3, -1, 0]])).tolist() == [[17, -1, 0]]
    assert reduced.to_draft_ids(torch.tensor([17, 96, 1, -100])).tolist() == [3, 5, -100, -100]
    assert torch.equal(full.to_target_ids(torch.tensor([4, -1])), torch.tensor([4, -1]))


def test_reduced_vocab_round_trips_through_the_published_layout(target, tmp_path):
    torch.manual_seed(1)
    drafter = DFlashDrafter(config(4), target.get_input_embeddings(), target.get_output_embeddings())
    drafter.set_draft_vocab(torch.tensor([1, 8, 9, 60]))
    drafter.save_pretrained(tmp_path, dtype=torch.bfloat16)
    back = load_drafter(tmp_path, target)
    assert back.draft_vocab_ids.tolist() == [1, 8, 9, 60] and back.draft_vocab_ids.dtype == torch.int64
    assert back.draft_vocab_size == 4 and back.config.draft_vocab_size == 4


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([1, 1, 2, 3]), "increasing"),
    (torch.tensor([1, 2, 3, VOCAB]), "increasing ids in"),
    (torch.tensor([1, 2, 3]), "shape"),
])
def test_bad_draft_vocab_is_refused(target, ids, message):
    drafter = DFlashDrafter(config(4), target.get_input_embeddings(), target.get_output_embeddings())
    with pytest.raises(ValueError, match=message):
        drafter.set_draft_vocab(ids)


def test_draft_vocab_size_beyond_the_vocabulary_is_refused(target):
    with pytest.raises(ValueError, match="draft_vocab_size"):
        DFlashDrafter(config(VOCAB + 1), target.get_input_embeddings(), target.get_output_embeddings())


def test_draft_vocabulary_is_frequent_tokens_then_low_ids():
    seq = lambda toks, p: Sequence(torch.tensor(toks), torch.zeros(len(toks), 2), torch.tensor(toks), p)
    seqs = [seq([50, 50, 50, 7, 7, 3], 3), seq([50, 9, 9, 3], 1)]
    # Counts: 50 x4, then 3, 7, 9 x2 each (ties to the lower id), then unseen ids from 0.
    assert frequent_tokens(seqs, 2, 60).tolist() == [3, 50]
    assert frequent_tokens(seqs, 6, 60).tolist() == [0, 1, 3, 7, 9, 50]
    with pytest.raises(ValueError, match="--draft-vocab"):
        frequent_tokens(seqs, 61, 60)


@pytest.mark.model
def test_engine_trees_carry_target_ids_with_a_reduced_vocab(smollm2):
    """A reduced-vocab drafter in the decoding loop: lossless, and the recorded candidates are
    target token ids of the draft vocabulary."""
    from bastion.engine import GenerationConfig, generate
    from bastion.models import chat_prompt_ids
    from bastion.training.init import drafter_config_for

    model, tokenizer = smollm2
    ids = chat_prompt_ids(tokenizer, "Count from 1 to 10.")
    ar = generate(model, ids, GenerationConfig(strategy="ar", max_new_tokens=16))
    base = drafter_config_for(model, tokenizer, num_layers=1, block_size=4, layer_ids=[1, 15])
    vocab = torch.tensor(sorted(set(range(0, 2000)) | set(ar.tokens)))
    torch.manual_seed(0)
    drafter = DFlashDrafter(dataclasses.replace(base, draft_vocab_size=len(vocab)), model.get_input_embeddings(), model.get_output_embeddings())
    drafter.set_draft_vocab(vocab)
    result = generate(model, ids, GenerationConfig(strategy="ddtree", max_new_tokens=16, budget=6, record_topk=3), drafter=drafter.eval())
    assert result.tokens == ar.tokens
    allowed = set(vocab.tolist())
    assert all(t in allowed for r in result.rounds for row in r["topk_ids"] for t in row)
