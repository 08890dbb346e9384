"""The embedded GGUF's converted copy (``bastion.models``): it reloads the same model bit for
bit, its name changes with the file, a damaged copy is rebuilt, and a cache that cannot be
written costs only the message. The GGUF reads are replaced by the session's model, so no
test here pays the 30 s conversion."""

import os

import pytest
import torch
import transformers

from conftest import chat_ids

from bastion.models import converted_gguf_dir, embedded_gguf_path, load_target, save_converted


def same_weights(a, b) -> bool:
    """Whether models a and b hold equal tensors (b's cast to a's dtype; neither is changed)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


@pytest.fixture
def gguf_reads(monkeypatch, smollm2):
    """transformers' GGUF loads return the session's model and tokenizer; returns the list
    each such load appends its kind to."""
    model, tokenizer = smollm2
    reads = []
    real_model, real_tokenizer = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def fake(real, kind, value):
        def load(*args, **kwargs):
            if "gguf_file" not in kwargs:
                return real(*args, **kwargs)
            reads.append(kind)
            return value
        return load

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake(real_model, "model", model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake(real_tokenizer, "tokenizer", tokenizer))
    return reads


@pytest.mark.model
def test_a_converted_copy_reloads_the_same_model(smollm2, tmp_path):
    model, tokenizer = smollm2
    save_converted(model, tokenizer, tmp_path / "copy")
    again, again_tokenizer = load_target(tmp_path / "copy")
    assert same_weights(model, again) and again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    ids = chat_ids(tokenizer, "Write a haiku about rain.")
    assert chat_ids(again_tokenizer, "Write a haiku about rain.") == ids and again_tokenizer.eos_token_id == tokenizer.eos_token_id
    with torch.inference_mode():
        assert torch.equal(model(torch.tensor([ids])).logits, again(torch.tensor([ids])).logits)


def test_the_copys_name_follows_the_files_size_and_time(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 10)
    first = converted_gguf_dir(gguf)
    assert first.parent == tmp_path / "cache" / "bastion" / "models" and transformers.__version__ in first.name
    os.utime(gguf, ns=(0, 10**9))
    touched = converted_gguf_dir(gguf)
    gguf.write_bytes(b"x" * 11)
    os.utime(gguf, ns=(0, 10**9))
    assert len({first, touched, converted_gguf_dir(gguf)}) == 3


@pytest.mark.model
def test_the_first_load_converts_and_the_next_reads_the_copy(smollm2, gguf_reads, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first, _ = load_target()
    assert gguf_reads == ["tokenizer", "model"] and converted_gguf_dir(embedded_gguf_path()).is_dir()
    assert [p.name for p in (tmp_path / "bastion" / "models").iterdir()] == [converted_gguf_dir(embedded_gguf_path()).name]
    second, _ = load_target(dtype=torch.bfloat16)
    assert gguf_reads == ["tokenizer", "model"]
    assert first is smollm2[0] and second.dtype == torch.bfloat16 and same_weights(second, first)
    assert second.config._name_or_path == str(embedded_gguf_path().parent)


@pytest.mark.model
def test_a_damaged_copy_is_named_and_rebuilt(smollm2, gguf_reads, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load_target()
    weights = converted_gguf_dir(embedded_gguf_path()) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    model, _ = load_target()
    assert f"the converted copy {weights.parent} is unreadable" in capsys.readouterr().err
    assert gguf_reads == ["tokenizer", "model"] * 2 and same_weights(model, smollm2[0])
    again, _ = load_target()
    assert gguf_reads == ["tokenizer", "model"] * 2 and same_weights(again, smollm2[0])


@pytest.mark.model
def test_a_cache_that_cannot_be_written_costs_only_a_message(smollm2, gguf_reads, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    model, _ = load_target()
    assert model is smollm2[0] and "not keeping a converted copy of the model" in capsys.readouterr().err
