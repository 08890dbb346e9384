"""The README's decoding loop of your own runs as printed and gives the target's own greedy
tokens."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def example_code() -> str:
    text = README.read_text()
    section = text[text.index("### A decoding loop of your own"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_example_is_a_short_loop():
    assert len(example_code().splitlines()) <= 40


@pytest.mark.model
def test_the_readme_loop_equals_ar(embedded, capsys):
    """The example's ``load_target()`` returns the session's embedded model (the fixture loads
    it with the same call), so the loop runs without a second load."""
    from bastion.engine import GenerationConfig, generate

    namespace = {}
    exec(compile(example_code(), str(README), "exec"), namespace)
    model, tokenizer = namespace["model"], namespace["tokenizer"]
    expected = generate(model, namespace["ids"], GenerationConfig(strategy="ar", max_new_tokens=32, stop_on_eos=False)).tokens
    assert namespace["out"][:32] == expected
    assert tokenizer.decode(expected) in capsys.readouterr().out
