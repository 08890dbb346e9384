"""The ``bastion`` command: ``generate`` (the main job), ``bench``, ``calibrate`` and
``train-drafter``. User errors end with one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bastion_ext.ops import MAX_K, MAX_NODES

from .cli_support import EXIT_INTERRUPTED, UserError, check_latency_path, int_list, load_models, load_prompt_rows
from .dtypes import CHOICES as DTYPES
from .engine.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from .engine.strategies import DEFAULT_TOPK, STRATEGIES
from .outputs import AtomicLines, check_writable

EXIT_USER_ERROR = 2


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def int_at_most(limit: int):
    """An argparse type: an int in 1..limit."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be <= {limit}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def temperature(text: str) -> float:
    value = float(text)
    if not (value == 0 or MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {text}")
    return value


def top_p(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="target: a HF model directory or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--drafter", default=None, help="DFlash drafter directory (default: the committed one for the embedded target)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="target and drafter dtype; auto: bfloat16 on CUDA and on CPUs with AMX or AVX512-BF16, else float32")
    p.add_argument("--latency", default=None, help="latency calibration JSON (default: the per-model cache file)")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=temperature, default=0.0,
                   help=f"0 = greedy (default), else sample at T in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")
    p.add_argument("--top-p", type=top_p, default=1.0, help="nucleus mass in (0, 1] (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=int_at_most(MAX_K), default=DEFAULT_TOPK, help="tree branching width K")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bastion", description="Budget-aware draft-tree speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt (streaming it) or from a file of prompts")
    g.add_argument("prompt", nargs="?", help="the prompt (or --prompts FILE)")
    g.add_argument("--prompts", default=None, help="JSONL file, one object per line with \"prompt\": decode them all, in batches")
    g.add_argument("--batch-size", type=positive_int, default=1, help="with --prompts: requests decoded together (default 1)")
    g.add_argument("--out", default=None, help="with --prompts: write one JSON object per prompt here, in input order (default stdout)")
    g.add_argument("--strategy", choices=STRATEGIES, default="bastion")
    g.add_argument("--budget", type=int_at_most(MAX_NODES), default=None, help="ddtree: nodes per tree; caddtree/bastion: the cap")
    g.add_argument("--compare", action="store_true", help="also run `ar` and print the measured speedup (not with --prompts)")
    g.add_argument("--records", default=None, help="write one JSON line per round here (for bench/replay_policies.py; not with --prompts)")
    g.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    add_model_args(g)
    add_decode_args(g)

    b = sub.add_parser("bench", help="run strategies over the prompt sets; table, JSON and plot")
    b.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated (ar is always run)")
    b.add_argument("--budgets", default="4,8,16,32", help="ddtree budgets to sweep, comma-separated")
    b.add_argument("--prompts", default=None, help="JSONL file, one object per line: prompt, optional category (default: the eval set)")
    b.add_argument("--categories", default=None, help="comma-separated categories to run (default: all in the prompt set)")
    b.add_argument("--prompts-per-category", type=positive_int, default=3)
    b.add_argument("--batch-sizes", default="1", help="requests decoded together, comma-separated (default 1)")
    b.add_argument("--per-request", action="store_true",
                   help="also run bastion with each request's tree cut on its own (against the batch allocation)")
    b.add_argument("--hf-baselines", action="store_true", help="also time transformers generate() and its prompt lookup")
    b.add_argument("--ignore-eos", action="store_true",
                   help="decode every request to --max-new-tokens: every strategy then does the same work, where in "
                        "bf16 a near-tie can end an answer elsewhere and, in a batch, change how many requests share each round")
    b.add_argument("--repeats", type=positive_int, default=1,
                   help="run every batch this many times, the strategies in reverse order every other time; rows sum "
                        "every repeat (their prompts and same-as-ar counts are request runs), records carry the repeat")
    b.add_argument("--interleave", action="store_true",
                   help="step the configurations' runs of a batch in turn, one round of each, each timed by its own rounds "
                        "(its clock paused while the others step), instead of one run after another: a machine whose speed "
                        "drifts within seconds then weighs on every configuration alike")
    b.add_argument("--out", default="bench/results", help="directory for bench.json, bench.png and records")
    add_model_args(b)
    add_decode_args(b)
    b.set_defaults(max_new_tokens=64)

    c = sub.add_parser("calibrate", help="measure the verify latency grid on this device and save it")
    c.add_argument("--ns", default="2,4,8,16,32,64,128", help="verify tokens per forward (root + nodes)")
    c.add_argument("--cs", default="64,256,1024", help="context lengths")
    c.add_argument("--repeats", type=positive_int, default=3)
    c.add_argument("--out", default=None, help="output JSON (default: the per-model cache file)")
    add_model_args(c)

    sub.add_parser("train-drafter", help="distil a DFlash drafter for the target (see bastion train-drafter --help)", add_help=False)
    return parser


def format_summary(name: str, summary: dict) -> str:
    line = f"[{name}] {summary['new_tokens']} tokens in {summary['seconds']:.2f} s = {summary['tokens_per_s']:.2f} tokens/s"
    if summary["rounds"]:
        budgets = ", ".join(f"{n}x{count}" for n, count in summary["budgets"].items())
        line += (f"; {summary['rounds']} rounds, mean accepted length {summary['mean_accept_len']:.2f}, "
                 f"mean tree size {summary['mean_tree_size']:.1f}; tree sizes chosen (size x rounds): {budgets}")
    if summary.get("estimated_speedup") is not None:
        # The speedup floor's account (caddtree, bastion): size 0 above is a plain step.
        line += (f"; {summary['drafted_rounds']} rounds drafted, {summary['plain_rounds']} plain, {summary['probes']} probes; "
                 f"speedup over a plain step in drafted rounds: estimated {summary['estimated_speedup']:.2f}x, "
                 f"realised {summary['realised_speedup']:.2f}x")
    return line


class _Stdout:
    """stdout with ``AtomicLines``' interface (nothing to protect)."""

    def __init__(self):
        self.lines = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write_line(self, text: str) -> None:
        print(text, flush=True)
        self.lines += 1


def _generate_file(args, rows, model, tokenizer, drafter, latency, config, eos) -> int:
    """``generate --prompts FILE``: every prompt, up to ``--batch-size`` in flight (a waiting
    prompt joins as soon as one finishes), one JSON object per prompt to ``--out`` or stdout,
    in input order, each written as soon as it and every prompt before it are finished; a
    summary on stderr. Every prompt is checked against the context window before the first
    forward."""
    from . import engine
    from .engine.config import check_context

    positions = 0 if drafter is None else drafter.block_size - 1
    all_ids = []
    for row in rows:
        all_ids.append(_prompt_ids(args, tokenizer, row["prompt"]))
        try:
            check_context(model, len(all_ids[-1]), args.max_new_tokens, positions)
        except ValueError as err:
            raise UserError(f"{args.prompts}:{row['line']}: {err}; nothing generated") from None
    start = time.perf_counter()
    finished: dict[int, str] = {}
    with AtomicLines(args.out) if args.out else _Stdout() as out:

        def write_finished(index: int, tokens: list[int], rounds: list[dict]) -> None:
            row = rows[index]
            finished[index] = json.dumps({
                "id": row["id"], "prompt": row["prompt"], "text": tokenizer.decode(tokens, skip_special_tokens=True),
                "token_ids": tokens, "new_tokens": len(tokens), "rounds": len(rounds),
                "mean_accept_len": sum(r["accept_len"] for r in rounds) / max(len(rounds), 1),
                "finished_s": time.perf_counter() - start})
            while out.lines in finished:  # the next line in input order is ready
                out.write_line(finished.pop(out.lines))

        results = engine.generate_batch(model, all_ids, config, drafter=drafter, latency=latency, eos_token_ids=eos,
                                        batch_size=args.batch_size, on_finish=write_finished)
    tokens = sum(len(r.tokens) for r in results)
    print(f"[{args.strategy}] {len(rows)} prompts, up to {args.batch_size} in flight: {tokens} tokens in "
          f"{results[0].total_s:.2f} s = {tokens / results[0].total_s:.2f} tokens/s", file=sys.stderr)
    return 0


def _prompt_ids(args, tokenizer, text: str) -> list[int]:
    from .models import chat_prompt_ids

    return tokenizer(text, add_special_tokens=False)["input_ids"] if args.no_chat_template else chat_prompt_ids(tokenizer, text)


def cmd_generate(args) -> int:
    from .calibrate import load_or_calibrate
    from .engine import GenerationConfig, generate

    if (args.prompt is None) == (args.prompts is None):
        raise UserError("give a prompt or --prompts FILE (one of them)")
    if args.prompts is None and (args.batch_size != 1 or args.out):
        raise UserError("--batch-size and --out go with --prompts FILE")
    if args.prompts is not None and (args.records or args.compare):
        # Both are written for one request; a file's batches would silently go without them.
        raise UserError("--records and --compare go with a single prompt, not --prompts FILE")
    # Everything the user gave is checked before the model loads (seconds to minutes).
    rows = load_prompt_rows(args.prompts) if args.prompts is not None else None
    if args.out:
        check_writable(args.out, "--out", source=args.prompts)
    if args.records:
        check_writable(args.records, "--records")
    check_latency_path(args.latency)
    model, tokenizer, drafter = load_models(args, need_drafter=args.strategy != "ar")
    latency = None
    if args.strategy in ("caddtree", "bastion"):
        latency = load_or_calibrate(model, drafter, args.latency, log=lambda m: print(m, file=sys.stderr))
    config = GenerationConfig(strategy=args.strategy, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed, budget=args.budget, topk=args.topk,
                              record_topk=8 if args.records else 0)
    eos = tuple(t for t in [tokenizer.eos_token_id] if t is not None)
    if args.prompts is not None:
        return _generate_file(args, rows, model, tokenizer, drafter, latency, config, eos)
    ids = _prompt_ids(args, tokenizer, args.prompt)
    streamed: list[int] = []
    printed = [0]

    def stream(new: list[int]) -> None:
        streamed.extend(new)
        text = tokenizer.decode(streamed, skip_special_tokens=True)
        # A token can end mid-character; hold back until the text is stable.
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[printed[0]:])
            sys.stdout.flush()
            printed[0] = len(text)

    result = generate(model, ids, config, drafter=drafter, latency=latency, eos_token_ids=eos, on_tokens=stream)
    sys.stdout.write(tokenizer.decode(streamed, skip_special_tokens=True)[printed[0]:] + "\n")
    print(format_summary(args.strategy, result.summary()))
    if args.records:
        with AtomicLines(args.records) as f:
            for record in result.rounds:
                f.write_line(json.dumps(record))
    if args.compare and args.strategy != "ar":
        baseline = generate(model, ids, GenerationConfig(strategy="ar", max_new_tokens=args.max_new_tokens,
                                                         temperature=args.temperature, top_p=args.top_p, seed=args.seed),
                            eos_token_ids=eos)
        print(format_summary("ar", baseline.summary()))
        same = "identical to ar" if baseline.tokens == result.tokens else (
            "differs from ar (at temperature > 0 the same seed gives ar's tokens up to near-ties "
            "of the target's probabilities, which rounding can flip)"
            if args.temperature > 0 else "DIFFERS from ar")
        print(f"speedup of {args.strategy} over ar: {result.tokens_per_s / baseline.tokens_per_s:.2f}x; output {same}")
        if baseline.tokens != result.tokens:
            from .engine.divergence import first_divergence

            divergence = first_divergence(model, ids, baseline.tokens, result.tokens, sampler=config.sampler())
            if divergence is not None:
                print(divergence.describe(model.dtype))
    return 0


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate, default_path, save

    if args.out:
        check_writable(args.out, "--out", make_parents=True)  # save() makes the directories
    ns, cs = int_list(args.ns, "--ns", MAX_NODES + 1), int_list(args.cs, "--cs")  # n verify tokens: root + n - 1 nodes
    model, _, drafter = load_models(args, need_drafter=True)
    result = calibrate(model, drafter, ns, cs, repeats=args.repeats)
    result.pop("runs")  # a deliberate calibration is final: later runs use it as it is
    path = save(result, args.out or default_path(model))
    fit = result["roofline"]
    print(f"verify grid on {result['device']}: ns={result['grid']['ns']} cs={result['grid']['cs']}")
    for c, row in zip(result["grid"]["cs"], result["grid"]["median_s"]):
        print(f"  c={c:5d}: " + " ".join(f"{1e3 * s:7.1f}" for s in row) + "  ms")
    print(f"roofline fit: RMSE {1e3 * fit['rmse_before_s']:.1f} ms -> {1e3 * fit['rmse_after_s']:.1f} ms; "
          f"drafter forward {1e3 * result['draft_seconds']:.1f} ms; saved {path}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv[:1] == ["train-drafter"]:
        from .training.cli import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return {"generate": cmd_generate, "bench": cmd_bench, "calibrate": cmd_calibrate}[args.command](args)
    except (UserError, ValueError, FileNotFoundError) as err:
        if os.environ.get("BASTION_DEBUG"):
            raise
        print(f"bastion: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("bastion: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
