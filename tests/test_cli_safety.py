"""``bastion generate`` never loses data and checks what it was given before working: options
and paths before the model loads, every prompt before the first forward, ``--out`` replaced
only by a complete result (issue 19)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bastion.cli
import bastion.models
from bastion.cli import main
from bastion.models import embedded_gguf_path

ROOT = Path(__file__).resolve().parents[1]
OLD = "".join(json.dumps({"old": i}) + "\n" for i in range(5))


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        return stop.code


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is a test failure: these errors must come first."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(bastion.models, "load_target", load)


@pytest.mark.parametrize("extra, message", [
    (["--budget", "100000"], "argument --budget: must be <= 4096, got 100000"),
    (["--topk", "0"], "argument --topk: must be >= 1"),
    (["--temperature", "nan"], "argument --temperature: must be 0 (greedy) or in [0.0001, 10000], got nan"),
    (["--temperature", "inf"], "argument --temperature: must be 0"),
    (["--temperature", "1e-40"], "argument --temperature: must be 0"),
    (["--top-p", "nan"], "argument --top-p: must be in (0, 1], got nan"),
    (["--top-p", "0"], "argument --top-p: must be in (0, 1]"),
    (["--out", "PROMPTS"], "is the input file itself"),
    (["--out", "DIR"], "is a directory"),
    (["--latency", "/no/such/latency.json"], "--latency '/no/such/latency.json' does not exist"),
], ids=["budget", "topk", "t-nan", "t-inf", "t-tiny", "top-p-nan", "top-p-0", "out-is-prompts", "out-is-dir",
        "latency-missing"])
def test_bad_options_fail_before_the_model_loads(no_model, tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(OLD.replace('"old"', '"prompt": "hi", "n"'))
    before = prompts.read_text()
    extra = [str(prompts) if a == "PROMPTS" else str(tmp_path) if a == "DIR" else a for a in extra]
    assert run_main(["generate", "--prompts", str(prompts), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1] and "Traceback" not in err  # argparse's usage may come first
    assert prompts.read_text() == before


def test_an_unwritable_records_path_fails_before_the_model_loads(no_model, capsys):
    assert run_main(["generate", "hi", "--records", "/no/such/dir/rounds.jsonl"]) == 2
    assert "--records '/no/such/dir/rounds.jsonl': directory '/no/such/dir' does not exist" in capsys.readouterr().err


def test_a_non_utf8_prompt_file_names_file_and_line(no_model, tmp_path, capsys):
    prompts = tmp_path / "latin1.jsonl"
    prompts.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    assert run_main(["generate", "--prompts", str(prompts)]) == 2
    assert f"{prompts}:2: not UTF-8 text" in capsys.readouterr().err


def test_a_truncated_gguf_is_named(tmp_path, capsys):
    cut = tmp_path / "cut.gguf"
    with open(embedded_gguf_path(), "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    assert run_main(["generate", "hi", "--model", str(cut), "--strategy", "ar"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"bastion: error: cannot load the model {cut}: not a complete GGUF file (truncated or corrupt)")


@pytest.mark.model
def test_an_overlong_prompt_is_named_before_anything_runs(embedded, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr("bastion.engine.generate_batch", lambda *a, **kw: calls.append(a))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n\n" + json.dumps({"prompt": "word " * 9000}) + "\n")
    out = tmp_path / "res.jsonl"
    out.write_text(OLD)
    assert run_main(["generate", "--prompts", str(prompts), "--out", str(out), "--strategy", "ar"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bastion: error: {prompts}:3: prompt of ") and "nothing generated" in err
    assert calls == [] and out.read_text() == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "res.jsonl"]


@pytest.mark.model
@pytest.mark.parametrize("failure, code, message", [(KeyboardInterrupt, 130, "bastion: interrupted"),
                                                    (ValueError("boom"), 2, "bastion: error: boom")])
def test_a_failed_run_keeps_out_and_its_finished_results(embedded, monkeypatch, tmp_path, capsys, failure, code, message):
    from bastion.engine.batch import Batch

    calls = []
    admit = Batch.admit

    def fail_second(self):
        """The second prompt's admission fails: the first is finished (one in flight)."""
        if self.waiting and None in self.slots:
            calls.append(1)
        if len(calls) == 2:
            raise failure
        return admit(self)

    monkeypatch.setattr(Batch, "admit", fail_second)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Say hi.", "Name a color.", "Count to three."]))
    out = tmp_path / "res.jsonl"
    out.write_text(OLD)
    argv = ["generate", "--prompts", str(prompts), "--out", str(out), "--strategy", "ar", "--max-new-tokens", "2"]
    assert run_main(argv) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == message and "Traceback" not in err
    assert f"kept the 1 finished result(s) in {out}.partial; {out} is untouched" in err
    assert out.read_text() == OLD
    assert [json.loads(line)["prompt"] for line in Path(f"{out}.partial").read_text().splitlines()] == ["Say hi."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "res.jsonl", "res.jsonl.partial"]


@pytest.mark.parametrize("delay", [1.0, 6.0], ids=["importing", "loading"])
def test_ctrl_c_prints_one_line_and_exits_130(delay, tmp_path):
    """SIGINT while torch imports (before ``main`` runs) or while the model loads: from its
    GGUF (an empty cache: 20-30 s), the interrupted conversion leaving no copy behind."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(ROOT)]), HF_HUB_OFFLINE="1",
               XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "bastion", "generate", "hi", "--strategy", "ar"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip() == "bastion: interrupted"
    assert not list(tmp_path.glob("bastion/models/*"))


def test_an_interrupt_before_main_s_own_handler_ends_with_one_line(monkeypatch, capsys):
    """``main`` parses its options before its ``try``: an interrupt there (the imports just
    done) is the command's too, not an exit by SIGINT."""
    from bastion.__main__ import run

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(bastion.cli, "main", interrupted)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # run() sets its own
    assert run() == 130
    assert capsys.readouterr().err.strip() == "bastion: interrupted"


def test_an_interrupt_lost_in_a_finaliser_comes_again(monkeypatch):
    """A Ctrl-C that lands in a ``__del__`` (the load's collected regex objects) is "ignored" by
    the interpreter; the command's hook raises it again in the main thread (CI saw the command
    run to the end, exit 0, after a Ctrl-C 1 s in)."""
    from bastion.__main__ import _deliver_lost_interrupt

    class Finaliser:
        def __del__(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "unraisablehook", _deliver_lost_interrupt)
    deadline = time.monotonic() + 30
    with pytest.raises(KeyboardInterrupt):
        Finaliser()  # collected at once: its interrupt is lost there ...
        while time.monotonic() < deadline:  # ... and raised again here
            pass


@pytest.mark.parametrize("argv, message", [
    (["bench", "--budgets", "4,100000"], "--budgets must be integers <= 4096, got '4,100000'"),
    (["bench", "--batch-sizes", "0"], "--batch-sizes must be integers >= 1"),
    (["bench", "--latency", "/no/such/latency.json"], "--latency '/no/such/latency.json' does not exist"),
    (["calibrate", "--ns", "2,5000"], "--ns must be integers <= 4097"),
])
def test_bench_and_calibrate_options_fail_before_the_model_loads(no_model, capsys, argv, message):
    assert run_main(argv) == 2
    assert message in capsys.readouterr().err


def test_calibrate_out_is_checked_before_the_model_loads(no_model, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run_main(["calibrate", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert run_main(["calibrate", "--out", str(blocker / "sub" / "lat.json")]) == 2
    assert "not writable" in capsys.readouterr().err
    # A directory still to be made is fine: the model load comes next (and fails here on purpose).
    assert run_main(["calibrate", "--out", str(tmp_path / "new" / "dir" / "lat.json")]) == 2
    assert "the model was loaded before the options were checked" in capsys.readouterr().err
