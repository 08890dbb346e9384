"""Token data of the drafter recipe: the committed chunk format (safetensors in gzip, no
pickle), its errors, the shrinking-batch greedy decoder, resuming, and the teacher-forced
features with their cache."""

import gzip

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bastion.drafter import select_features
from bastion.training.features import cached_features, featurize
from bastion.training.tokens import TokenData, generate_token_data, greedy_continuations, load_token_data, save_token_data

VOCAB, EOS, PAD = 61, 2, 0


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=128, eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(cfg).eval()


def test_token_data_round_trips_compressed_and_plain(tmp_path):
    data = TokenData.from_lists([[5, 6, 7], [8], [9, 10]], [1, 1, 0], ["a", "b", "c"])
    for name in ("d.safetensors.gz", "d.safetensors"):
        save_token_data(tmp_path / name, data)
        back = load_token_data(tmp_path / name)
        assert back.ids == ["a", "b", "c"] and back.sequence(2).tolist() == [9, 10]
        assert torch.equal(back.offsets, data.offsets) and back.generated_tokens == 4
    assert gzip.decompress((tmp_path / "d.safetensors.gz").read_bytes())[:8] == (tmp_path / "d.safetensors").read_bytes()[:8]


def test_corrupt_token_data_is_named(tmp_path):
    (tmp_path / "bad.safetensors.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.safetensors.gz.*corrupt"):
        load_token_data(tmp_path / "bad.safetensors.gz")
    data = TokenData.from_lists([[5, 6, 7]], [1], ["a"])
    save_token_data(tmp_path / "t.safetensors", data)
    blob = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_token_data(tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="3 sequences"):
        TokenData.from_lists([[1], [2], [3]], [0, 0], ["a", "b", "c"])


def test_shrinking_batch_matches_one_prompt_at_a_time(tiny_lm):
    prompts = [[5, 9, 11, 3], [7, 8], [4, 4, 4, 4, 4, 12, 13]]
    conts = greedy_continuations(tiny_lm, prompts, 10, EOS, PAD)
    for p, c in zip(prompts, conts):
        single = tiny_lm.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=10,
                                  do_sample=False, eos_token_id=EOS, pad_token_id=PAD)[0, len(p):].tolist()
        if EOS in single:
            single = single[: single.index(EOS) + 1]
        assert c == single


def test_featurize_is_one_forward_per_sequence_and_caches(tiny_lm, tmp_path):
    """Features, argmax and top-k of the padded batches equal each sequence's own forward; the
    cache is read back, and a damaged cache file is recomputed."""
    seqs = [[5, 9, 11, 3, 7], [7, 8], [4, 4, 4, 4, 4, 12, 13, 2]]
    data = TokenData.from_lists(seqs, [2, 1, 3], ["a", "b", "c"])
    got = featurize(tiny_lm, data, [0, 1], topk=3, batch_tokens=12)
    for i, s in enumerate(seqs):
        rows = slice(int(data.offsets[i]), int(data.offsets[i + 1]))
        with torch.no_grad():
            out = tiny_lm(torch.tensor([s]), output_hidden_states=True)
        torch.testing.assert_close(got["features"][rows], select_features(out.hidden_states, [0, 1])[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(got["argmax"][rows].long(), out.logits[0].argmax(-1))
        assert torch.equal(got["topk_ids"][rows].long(), out.logits[0].topk(3).indices)
    path = tmp_path / "chunk.safetensors"
    first = cached_features(tiny_lm, data, [0, 1], 3, path)
    assert torch.equal(cached_features(tiny_lm, data, [0, 1], 3, path)["argmax"], first["argmax"])
    path.write_bytes(path.read_bytes()[:100])
    assert torch.equal(cached_features(tiny_lm, data, [0, 1], 3, path)["argmax"], first["argmax"])


class ToyTokenizer:
    eos_token_id, pad_token_id = EOS, PAD

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return " ".join(m["content"] for m in messages)

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [3 + sum(map(ord, w)) % (VOCAB - 3) for w in text.split()]}

    def decode(self, ids, skip_special_tokens):
        return " ".join(f"w{i}" for i in ids if i != EOS)


def test_generation_resumes_and_multi_turn_rows_follow_their_first_answer(tiny_lm, tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"tell me about thing {i}"} for i in range(5)]
    rows.insert(1, {"id": "m0", "prompt": "tell me about thing 3", "follow_up": "more please"})
    first = generate_token_data(tiny_lm, ToyTokenizer(), rows, 6, 2, tmp_path / "chunks", deadline=0.0)
    assert first == []  # past the deadline: no chunk starts
    parts = generate_token_data(tiny_lm, ToyTokenizer(), rows, 6, 2, tmp_path / "chunks")
    assert [i for p in parts for i in p.ids][-1] == "m0"  # multi-turn rows run last
    def generated(name):
        return next(p.sequence(i)[int(p.prompt_lens[i]):] for p in parts for i in range(len(p)) if p.ids[i] == name)

    def prompt_len(name):
        return next(int(p.prompt_lens[i]) for p in parts for i in range(len(p)) if p.ids[i] == name)

    # The follow-up's prompt holds the first turn, the target's own answer to it (EOS aside) and the follow-up.
    assert prompt_len("m0") == prompt_len("r3") + int((generated("r3") != EOS).sum()) + 2
    stamps = sorted((tmp_path / "chunks").iterdir())
    assert len(stamps) == 3
    mtimes = [s.stat().st_mtime_ns for s in stamps]
    again = generate_token_data(tiny_lm, ToyTokenizer(), rows, 6, 2, tmp_path / "chunks")
    assert [s.stat().st_mtime_ns for s in sorted((tmp_path / "chunks").iterdir())] == mtimes  # resumed, not redone
    assert [p.tokens.tolist() for p in again] == [p.tokens.tolist() for p in parts]
    with pytest.raises(ValueError, match="other prompts"):
        generate_token_data(tiny_lm, ToyTokenizer(), rows, 6, 3, tmp_path / "chunks")
