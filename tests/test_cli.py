"""The ``bastion`` command: smoke runs in-process on the session's model, and user errors
(one line on stderr, exit code 2, never a traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own usage errors
        return stop.code


@pytest.mark.model
def test_generate_ar_streams_text_and_summary(embedded, capsys):
    assert run_main(["generate", "What is 2+2?", "--strategy", "ar", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("[ar] ") and "tokens/s" in lines[-1]
    assert len(lines) >= 2 and lines[0].strip()  # the streamed answer comes first


@pytest.fixture(scope="module")
def drafter_dir(smollm2, tmp_path_factory):
    """A DFlash checkpoint (published layout) with random weights, for the --drafter flag."""
    from bastion.drafter import DFlashDrafter
    from bastion.training.init import drafter_config_for

    model, tokenizer = smollm2
    config = drafter_config_for(model, tokenizer, num_layers=1, block_size=6, layer_ids=[1, 15])
    path = tmp_path_factory.mktemp("drafter")
    DFlashDrafter(config, model.get_input_embeddings(), model.get_output_embeddings()).save_pretrained(path)
    return str(path)


@pytest.mark.model
def test_generate_compare_reports_speedup_and_identity(embedded, drafter_dir, capsys, tmp_path):
    records = tmp_path / "rounds.jsonl"
    argv = ["generate", "Write a Python function that adds two numbers.", "--strategy", "ddtree", "--budget", "8",
            "--max-new-tokens", "12", "--compare", "--records", str(records), "--drafter", drafter_dir]
    assert run_main(argv) == 0
    out = capsys.readouterr().out
    assert "[ddtree]" in out and "[ar]" in out
    assert "speedup of ddtree over ar" in out and "identical to ar" in out
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert rows and all(len(r["topk_ids"]) == len(r["target_tokens"]) for r in rows)


@pytest.mark.model
def test_calibrate_saves_a_latency_model_generate_uses(embedded, drafter_dir, capsys, tmp_path):
    out = tmp_path / "latency.json"
    # Three repeats: the fit takes each point's fastest, so one sample slowed by other work on
    # the machine cannot make the sweep unfittable (with one repeat it sometimes did under load).
    argv = ["calibrate", "--ns", "1,4,8", "--cs", "8", "--repeats", "3", "--out", str(out), "--drafter", drafter_dir]
    assert run_main(argv) == 0
    saved = json.loads(out.read_text())
    assert saved["grid"]["ns"] == [1, 4, 8] and len(saved["grid"]["median_s"][0]) == 3
    assert saved["draft_seconds"] > 0 and "saved" in capsys.readouterr().out
    argv = ["generate", "Hi!", "--strategy", "bastion", "--budget", "12", "--max-new-tokens", "6",
            "--latency", str(out), "--drafter", drafter_dir]
    assert run_main(argv) == 0
    assert "[bastion]" in capsys.readouterr().out


def _bad_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + os.urandom(256))
    return str(path)


@pytest.mark.model
@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--model", "/no/such/model"], "does not exist"),
    (["generate", "hi", "--model", "BAD_GGUF"], "cannot load the model"),
    (["generate", "hi", "--strategy", "ddtree", "--drafter", "/no/such/drafter"], "drafter path"),
    (["generate", "word " * 9000, "--strategy", "ar"], "exceeds the model's context"),
    (["generate", "hi", "--budget", "0"], "--budget: must be >= 1"),
    (["generate", "hi", "--strategy", "beam"], "invalid choice: 'beam'"),
    (["bench", "--categories", "poetry"], "unknown ['poetry']"),
    (["bench", "--prompts", "/no/such/prompts.jsonl"], "--prompts: cannot read"),
    (["bench", "--prompts", "BAD_PROMPTS"], "bad.jsonl:2: each line needs"),
    (["generate", "hi", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["generate", "--strategy", "ar"], "give a prompt or --prompts FILE"),
    (["generate", "hi", "--batch-size", "4"], "--batch-size and --out go with --prompts"),
    (["generate", "--prompts", "BAD_PROMPTS", "--strategy", "ar"], "bad.jsonl:2: each line needs"),
    (["generate", "--prompts", "BAD_PROMPTS", "--records", "rounds.jsonl"], "--records and --compare go with a single prompt"),
    (["generate", "--prompts", "BAD_PROMPTS", "--compare"], "--records and --compare go with a single prompt"),
], ids=["missing-model", "corrupt-weights", "missing-drafter", "prompt-too-long", "budget-0", "unknown-strategy",
        "unknown-category", "missing-prompts", "malformed-prompts", "unknown-dtype",
        "no-prompt", "batch-without-file", "generate-malformed-prompts", "records-with-file", "compare-with-file"])
def test_user_errors_are_one_line_and_exit_2(embedded, capsys, tmp_path, argv, message):
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    argv = [_bad_gguf(tmp_path) if a == "BAD_GGUF" else str(bad_prompts) if a == "BAD_PROMPTS" else a for a in argv]
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(("bastion: error:", "bastion generate: error:", "bastion bench: error:"))


@pytest.mark.model
def test_bench_runs_a_users_prompt_file(embedded, tmp_path, capsys):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"prompt": "Say hi.", "category": "greet"}\n\n{"prompt": "Name a color."}\n')
    out = tmp_path / "results"
    assert run_main(["bench", "--prompts", str(prompts), "--strategies", "ar", "--max-new-tokens", "3", "--out", str(out)]) == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert {(r["strategy"], r["category"], r["prompts"]) for r in rows} == {("ar", "greet", 1), ("ar", "custom", 1), ("ar", "all", 2)}
    assert "greet" in capsys.readouterr().out


@pytest.mark.model
def test_generate_a_prompt_file_in_batches(embedded, drafter_dir, tmp_path):
    """--prompts FILE --batch-size 2 --out: one object per prompt, in input order, each the
    tokens a batch-1 run of that prompt gives."""
    texts = ["Say hi.", "Name a color.", "Count to three."]
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--prompts", str(prompts), "--batch-size", "2", "--out", str(out), "--strategy", "ddtree",
            "--drafter", drafter_dir, "--max-new-tokens", "5"]
    assert run_main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == texts
    assert all({"prompt", "text", "token_ids", "new_tokens"} <= r.keys() and r["new_tokens"] == len(r["token_ids"]) for r in rows)
    single = tmp_path / "single.jsonl"
    assert run_main(argv[:4] + ["1", "--out", str(single)] + argv[7:]) == 0
    assert [r["token_ids"] for r in rows] == [json.loads(line)["token_ids"] for line in single.read_text().splitlines()]


@pytest.mark.model
def test_bench_batch_sizes(embedded, tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Say hi.", "Name a color.", "Count to three."]))
    out = tmp_path / "results"
    argv = ["bench", "--prompts", str(prompts), "--strategies", "ar", "--batch-sizes", "1,2", "--max-new-tokens", "3", "--out", str(out)]
    assert run_main(argv) == 0
    rows = {(r["name"], r["category"]): r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows[("ar b2", "all")]["batch"] == 2 and rows[("ar b2", "all")]["prompts"] == 3
    assert rows[("ar b2", "all")]["identical_to_ar"] == 3 and rows[("ar", "all")]["speedup_vs_ar"] == 1.0


@pytest.mark.model
def test_bench_repeats_alternate_the_order_and_sum_every_run(embedded, drafter_dir, tmp_path, monkeypatch):
    """--repeats 2: each batch runs ar, ddtree, then ddtree, ar (a drifting machine weighs on
    both alike); rows count every run and compare each with ar's run of the same repeat; the
    JSON lists every run in the order it ran (for paired comparisons)."""
    import bastion.bench

    order = []
    real = bastion.bench.generate_batch

    def logged(model, ids, config, **kwargs):
        order.append(config.strategy)
        return real(model, ids, config, **kwargs)

    monkeypatch.setattr(bastion.bench, "generate_batch", logged)
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    out = tmp_path / "results"
    argv = ["bench", "--prompts", str(prompts), "--strategies", "ar,ddtree", "--budgets", "2", "--drafter", drafter_dir,
            "--repeats", "2", "--max-new-tokens", "4", "--ignore-eos", "--out", str(out)]
    assert run_main(argv) == 0
    assert order == ["ar", "ddtree", "ddtree", "ar"]
    result = json.loads((out / "bench.json").read_text())
    rows = {(r["name"], r["category"]): r for r in result["rows"]}
    assert result["meta"]["repeats"] == 2
    assert rows[("ddtree@2", "all")]["prompts"] == 2 and rows[("ddtree@2", "all")]["identical_to_ar"] == 2
    assert rows[("ar", "all")]["new_tokens"] == 2 * 4
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert {r["repeat"] for r in records} == {0, 1}
    runs = result["runs"]
    assert [(r["name"], r["repeat"], r["new_tokens"]) for r in runs] == [("ar", 0, 4), ("ddtree@2", 0, 4), ("ddtree@2", 1, 4), ("ar", 1, 4)]
    assert sum(r["seconds"] for r in runs if r["name"] == "ar") == pytest.approx(rows[("ar", "all")]["seconds"])
    categories = {c for (_, c) in rows} - {"all"}
    assert all(r["prompt_ids"] == result["meta"]["prompts"] and {r["category"]} == categories for r in runs)


@pytest.mark.model
def test_bench_ignore_eos_decodes_every_token(embedded, tmp_path):
    """--ignore-eos: every request runs to --max-new-tokens (a short answer's EOS does not end
    it), so strategies compare the same work; the JSON says so."""
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Say hi.", "Name a color."]))
    counts = {}
    for flag in ([], ["--ignore-eos"]):
        out = tmp_path / f"results{len(flag)}"
        argv = ["bench", "--prompts", str(prompts), "--strategies", "ar", "--max-new-tokens", "40", "--out", str(out), *flag]
        assert run_main(argv) == 0
        result = json.loads((out / "bench.json").read_text())
        assert result["meta"]["stop_on_eos"] == (not flag)
        counts[bool(flag)] = {r["category"]: r["new_tokens"] for r in result["rows"]}["all"]
    assert counts[True] == 2 * 40 > counts[False]


def test_module_entry_point_reports_user_error_without_traceback():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(ROOT)]), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "bastion", "generate", "hi", "--model", "/no/such/model"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bastion: error: model path '/no/such/model' does not exist"


def test_summary_line_reports_the_speedup_floor():
    """Rounds drafted vs plain, probes, estimated vs realised speedup (issue 21), from records."""
    from bastion.cli import format_summary
    from bastion.engine import GenerationResult

    def record(n_nodes, accept_len, probe, estimate):
        return {"n_nodes": n_nodes, "drafted": n_nodes > 0, "accept_len": accept_len, "probe": probe,
                "estimated_speedup": estimate, "plain_s": 0.1, "t_draft": 0.05, "t_build": 0.0, "t_verify": 0.1, "t_commit": 0.05}

    rounds = [record(8, 3, True, 2.0), record(8, 1, False, 1.5), record(0, 0, False, None), record(0, 0, False, None)]
    summary = GenerationResult(list(range(8)), 10, 0.1, 1.0, rounds).summary()
    assert (summary["drafted_rounds"], summary["plain_rounds"], summary["probes"]) == (2, 2, 1)
    assert summary["estimated_speedup"] == pytest.approx(1.75) and summary["realised_speedup"] == pytest.approx(0.6 / 0.4)
    line = format_summary("bastion", summary)
    assert "2 rounds drafted, 2 plain, 1 probes" in line and "estimated 1.75x, realised 1.50x" in line
    assert "rounds drafted" not in format_summary("ddtree", GenerationResult([1], 10, 0.1, 1.0, [record(8, 0, False, None)]).summary())


def test_bench_plot_draws_every_batch_size(tmp_path):
    """bench.png holds the ddtree sweep and the realised points at every batch size (a run at
    batch 4 alone once drew an empty figure: it looked for the batch-1 rows only)."""
    from bastion.bench import plot

    def row(size, speedup):
        return {"mean_tree_size": size, "speedup_vs_ar": speedup}

    table = {("ar b4", "all"): row(0.0, 1.0), ("ddtree@2 b4", "all"): row(2.0, 0.8), ("ddtree@4 b4", "all"): row(4.0, 0.7),
             ("bastion b4", "all"): row(0.1, 0.98), ("bastion", "all"): row(3.0, 1.2), ("ar", "all"): row(0.0, 1.0)}
    names = {"ar": ("ar", 1), "bastion": ("bastion", 1), "ar b4": ("ar", 4), "ddtree@2 b4": ("ddtree@2", 4),
             "ddtree@4 b4": ("ddtree@4", 4), "bastion b4": ("bastion", 4)}
    labels = plot(table, names, [2, 4], tmp_path / "bench.png")
    assert labels == ["ddtree b4 (fixed budget)", "bastion (realised)", "bastion b4 (realised)"]
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert plot({("ar", "all"): row(0.0, 1.0)}, {"ar": ("ar", 1)}, [], tmp_path / "ar.png") == []
