"""``bastion bench``: every strategy over the project's eval prompts, the same prompts, each
batch ``--repeats`` times (strategies interleaved batch by batch, in reverse order every
other repeat; with ``--interleave``, round by round).

Prints a table (strategy x category: tokens/s, speedup over ``ar``, accepted length, tree
size, outputs identical to ``ar``), writes ``bench.json`` (rows, device, versions, command;
for ``caddtree`` and ``bastion`` the speedup floor's request-rounds drafted and plain, probes
and estimated vs realised speedup),
``rounds.jsonl`` (the round records, for bench/replay_policies.py) and ``bench.png``
(speedup vs tree budget: the fixed-budget sweep with the cost-aware policies' realized points).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from bastion_ext.ops import MAX_NODES

from .engine import Decoding, GenerationConfig, generate_batch, open_batch
from .engine.records import floor_summary
from .machine import device_name
from .models import chat_prompt_ids
from .prompts import load_prompts

HF_PROMPT_LOOKUP_TOKENS = 10


def row_name(configuration: str, batch: int) -> str:
    """The table's name of a configuration's runs at one batch size ("bastion", "bastion b4")."""
    return configuration if batch == 1 else f"{configuration} b{batch}"


def _runs(strategies: list[str], budgets: list[int], per_request: bool) -> list[tuple[str, str, int | None, bool]]:
    """(row name, strategy, budget, batch allocation) of every configuration to time; ddtree
    once per budget; with ``per_request`` also bastion cutting each request's tree on its own."""
    runs = [("ar", "ar", None, True)]
    for s in strategies:
        if s == "ddtree":
            runs += [(f"ddtree@{n}", "ddtree", n, True) for n in budgets]
        elif s != "ar":
            runs.append((s, s, None, True))
    if per_request and "bastion" in strategies:
        runs.append(("bastion per-request", "bastion", None, False))
    return runs


def _hf_generate(model, ids: list[int], max_new_tokens: int, eos: int | None, lookup: bool) -> tuple[list[int], float]:
    """transformers' own greedy ``generate()`` (optionally prompt-lookup assisted): (tokens,
    seconds). eos None: every one of the ``max_new_tokens`` is decoded."""
    inputs = torch.tensor([ids], device=model.device)
    extra = {"prompt_lookup_num_tokens": HF_PROMPT_LOOKUP_TOKENS} if lookup else {}
    if eos is None:  # transformers falls back on the model's own EOS; a minimum length masks it
        extra["min_new_tokens"] = max_new_tokens
    t0 = time.perf_counter()
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=eos, pad_token_id=eos, **extra)
    seconds = time.perf_counter() - t0
    return out[0, len(ids):].tolist(), seconds


PHASES = ("t_draft", "t_build", "t_verify", "t_commit")


def _batch_cell(results, references) -> dict:
    """One batch's measurements: tokens and rounds summed over its requests, its wall time and
    the seconds of each round phase (the batch's rounds are the longest-running request's)."""
    rounds = sum(len(r.rounds) for r in results)
    longest = max(results, key=lambda r: len(r.rounds))
    return {
        "phase_s": {p: sum(r[p] for r in longest.rounds) for p in PHASES},
        "prompts": len(results),
        "new_tokens": sum(len(r.tokens) for r in results),
        "seconds": results[0].total_s,
        "rounds": rounds,
        "mean_accept_len": sum(r.mean_accept_len * len(r.rounds) for r in results) / rounds if rounds else 0.0,
        "mean_tree_size": sum(r.mean_tree_size * len(r.rounds) for r in results) / rounds if rounds else 0.0,
        "identical_to_ar": sum(r.tokens == ref for r, ref in zip(results, references)),
        "round_records": [record for r in results for record in r.rounds],  # for floor_summary; not written
    }


def _aggregate(cells: list[dict]) -> dict:
    tokens = sum(c["new_tokens"] for c in cells)
    seconds = sum(c["seconds"] for c in cells)
    rounds = sum(c["rounds"] for c in cells)
    phases = {p: sum(c.get("phase_s", {}).get(p, 0.0) for c in cells) for p in PHASES}
    in_rounds = sum(phases.values())
    return {
        "phase_s": phases,
        # build (with the round's host read) + accept and commit, as a share of the rounds' time
        "build_commit_share": (phases["t_build"] + phases["t_commit"]) / in_rounds if in_rounds else 0.0,
        "prompts": sum(c["prompts"] for c in cells),
        "new_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "mean_accept_len": sum(c["mean_accept_len"] * c["rounds"] for c in cells) / rounds if rounds else 0.0,
        "mean_tree_size": sum(c["mean_tree_size"] * c["rounds"] for c in cells) / rounds if rounds else 0.0,
        "identical_to_ar": sum(c["identical_to_ar"] for c in cells),
        # The speedup floor: request-rounds drafted and plain, probes, estimated vs realised speedup.
        **floor_summary([record for c in cells for record in c.get("round_records", [])]),
    }


def run_in_turn(model, ids: list[list[int]], configs: dict[str, GenerationConfig], drafter, latency,
                eos_token_ids: tuple[int, ...]) -> dict[str, list]:
    """Each configuration's run of the prompts ``ids``, one after another in the order of
    ``configs``: {name: one GenerationResult per prompt}."""
    return {name: generate_batch(model, ids, config, drafter=drafter, latency=latency, eos_token_ids=eos_token_ids)
            for name, config in configs.items()}


@torch.inference_mode()
def run_interleaved(model, ids: list[list[int]], configs: dict[str, GenerationConfig], drafter, latency,
                    eos_token_ids: tuple[int, ...]) -> dict[str, list]:
    """:func:`run_in_turn`, the runs stepped in turn (:func:`step_in_turn`)."""
    return step_in_turn({name: Decoding(*open_batch(model, ids, config, drafter, latency, eos_token_ids))
                         for name, config in configs.items()})


@torch.inference_mode()
def step_in_turn(runs: dict[str, Decoding]) -> dict[str, list]:
    """Step opened runs in turn, one round of each (their prefills first), to their ends:
    {name: one GenerationResult per prompt}. Each run's clock is paused while the others step,
    so its time is its own rounds', and a machine whose speed drifts within seconds (a shared
    VM's CPU moved 7.4 to 10.9 s between runs of the same 128 tokens) weighs on every run
    alike. The runs share the weights and, on the CPU, the caches: a round follows another
    run's round, never its own."""
    running = {name: iter(decoding) for name, decoding in runs.items()}
    done = object()
    while running:
        for name, stepping in list(running.items()):
            clock = runs[name].rounds.clock
            if clock.paused:
                clock.resume()
            if next(stepping, done) is done:
                del running[name]
            else:
                clock.pause()
    return {name: decoding.results for name, decoding in runs.items()}


def run_bench(args) -> int:
    from tqdm import tqdm

    from .calibrate import load_or_calibrate
    from .cli_support import UserError, check_latency_path, int_list, load_models, load_prompt_rows

    rows = load_prompt_rows(args.prompts) if args.prompts else load_prompts("eval")
    known = list(dict.fromkeys(r["category"] for r in rows))
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else known
    unknown = sorted(set(categories) - set(known))
    if unknown:
        raise UserError(f"--categories: unknown {unknown}; the prompt set has {', '.join(known)}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    from .engine.strategies import STRATEGIES

    bad = sorted(set(strategies) - set(STRATEGIES))
    if bad:
        raise UserError(f"--strategies: unknown {bad}; choose from {', '.join(STRATEGIES)}")
    budgets = int_list(args.budgets, "--budgets", MAX_NODES)
    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    check_latency_path(args.latency)
    model, tokenizer, drafter = load_models(args, need_drafter=any(s != "ar" for s in strategies))
    latency = None
    if {"caddtree", "bastion"} & set(strategies):
        latency = load_or_calibrate(model, drafter, args.latency, log=lambda m: print(m, file=sys.stderr))
    prompts = [row for c in categories for row in [r for r in rows if r["category"] == c][: args.prompts_per_category]]
    runs = _runs(strategies, budgets, args.per_request)
    hf = [("hf_generate", False), ("hf_prompt_lookup", True)] if args.hf_baselines else []
    eos = None if args.ignore_eos else tokenizer.eos_token_id
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Batches are formed within a category, in prompt order, so that every cell has one category.
    chunks = [(batch, c, group[i:i + batch]) for batch in batch_sizes for c in categories
              for group in [[r for r in prompts if r["category"] == c]] for i in range(0, len(group), batch)]
    cells: dict[tuple[str, str], list[dict]] = {}
    records = []
    runs_made = []  # one per generate_batch call, in the order they ran (paired comparisons)
    names: dict[str, tuple[str, int]] = {}  # row name -> (configuration, batch size), in run order
    repeats = args.repeats
    progress = tqdm(total=repeats * sum(len(runs) + (len(hf) * len(chunk) if batch == 1 else 0) for batch, _, chunk in chunks),
                    desc="bench", unit="run")
    for batch, category, chunk in chunks:
        ids = [chat_prompt_ids(tokenizer, row["prompt"]) for row in chunk]
        for repeat in range(repeats):
            # Every other repeat runs the configurations in reverse order: a machine whose speed
            # drifts over seconds (a shared VM's CPU) then weighs on each of them alike.
            configs = {}
            for name, strategy, budget, allocation in runs if repeat % 2 == 0 else runs[::-1]:
                progress.update()
                if not allocation and batch == 1:  # one request: nothing to allocate, the same run as bastion
                    continue
                configs[name] = GenerationConfig(strategy=strategy, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                                 top_p=args.top_p, seed=args.seed, budget=budget, topk=args.topk,
                                                 record_topk=args.topk if strategy != "ar" else 0, batch_allocation=allocation,
                                                 stop_on_eos=eos is not None)
            decode = run_interleaved if args.interleave else run_in_turn
            outputs = decode(model, ids, configs, drafter, latency, () if eos is None else (eos,))
            for name, results in outputs.items():
                runs_made.append({"name": row_name(name, batch), "category": category, "repeat": repeat,
                                  "prompt_ids": [row["id"] for row in chunk], "seconds": results[0].total_s,
                                  "new_tokens": sum(len(r.tokens) for r in results)})
            references = [r.tokens for r in outputs["ar"]]
            for name in (name for name, *_ in runs if name in outputs):  # rows in the table's order
                results = outputs[name]
                label = row_name(name, batch)
                names.setdefault(label, (name, batch))
                cells.setdefault((label, category), []).append(_batch_cell(results, references))
                records += [dict(r, strategy=name, batch=batch, category=category, prompt_id=row["id"], repeat=repeat)
                            for row, result in zip(chunk, results) for r in result.rounds]
            for name, lookup in hf if batch == 1 else []:
                names.setdefault(name, (name, 1))
                for prompt_ids, reference in zip(ids, references):
                    tokens, seconds = _hf_generate(model, prompt_ids, args.max_new_tokens, eos, lookup)
                    cell = {"prompts": 1, "new_tokens": len(tokens), "seconds": seconds, "rounds": 0,
                            "mean_accept_len": 0.0, "mean_tree_size": 0.0, "identical_to_ar": int(tokens == reference)}
                    cells.setdefault((name, category), []).append(cell)
                    progress.update()
    progress.close()

    table = {}
    for name in names:
        for cat in categories + ["all"]:
            group = [c for (n, k), cs in cells.items() if n == name and (cat == "all" or k == cat) for c in cs]
            table[(name, cat)] = _aggregate(group)
    # Speedups are over single-stream ar when it ran, else over ar at the smallest batch size.
    ar_name = "ar" if 1 in batch_sizes else f"ar b{min(batch_sizes)}"
    for (name, cat), agg in table.items():
        agg["speedup_vs_ar"] = agg["tokens_per_s"] / table[(ar_name, cat)]["tokens_per_s"]

    print(format_table(table, names, categories + ["all"]))
    meta = {
        "command": "bastion " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(("bastion", "__main__.py")) else " ".join(sys.argv),
        "device": device_name(model.device),
        "torch": torch.__version__, "python": platform.python_version(), "dtype": str(model.dtype).removeprefix("torch."),
        "max_new_tokens": args.max_new_tokens, "stop_on_eos": not args.ignore_eos, "temperature": args.temperature, "topk": args.topk,
        "batch_sizes": batch_sizes, "speedup_baseline": ar_name, "repeats": repeats, "interleave": args.interleave,
        "prompts": [r["id"] for r in prompts],
    }
    rows = [dict(strategy=names[n][0], batch=names[n][1], name=n, category=c, **v) for (n, c), v in table.items()]
    (out_dir / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs_made}, indent=1))
    with open(out_dir / "rounds.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    plot(table, names, budgets, out_dir / "bench.png")
    print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'rounds.jsonl'}, {out_dir / 'bench.png'}")
    return 0


def format_table(table: dict, names: list[str], categories: list[str]) -> str:
    """Fixed-width text: one row per (strategy, category)."""
    head = f"{'strategy':<26}{'category':<9}{'tok/s':>8}{'vs ar':>8}{'acc.len':>9}{'tree':>7}{'same as ar':>12}{'build+commit':>14}"
    lines = [head, "-" * len(head)]
    for name in names:
        for cat in categories:
            a = table[(name, cat)]
            lines.append(f"{name:<26}{cat:<9}{a['tokens_per_s']:>8.2f}{a['speedup_vs_ar']:>7.2f}x"
                         f"{a['mean_accept_len']:>9.2f}{a['mean_tree_size']:>7.1f}{a['identical_to_ar']:>8}/{a['prompts']:<3}"
                         f"{100 * a['build_commit_share']:>13.1f}%")
    return "\n".join(lines)


POINT_MARKERS = {"dflash": "s", "caddtree": "^", "bastion": "*", "bastion per-request": "P"}


def plot(table: dict, names: dict[str, tuple[str, int]], budgets: list[int], path: Path) -> list[str]:
    """Speedup over ar vs mean tree size (all categories together), at every batch size: the
    ddtree budget sweep as a line, the other drafting strategies as their realised points.
    names: row name -> (configuration, batch size), as the table's rows. Returns the labels
    drawn (a run of ``ar`` alone draws none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({b for _, b in names.values()}):
        rows = [table[(row_name(f"ddtree@{n}", batch), "all")] for n in budgets if (row_name(f"ddtree@{n}", batch), "all") in table]
        if rows:
            ax.plot([a["mean_tree_size"] for a in rows], [a["speedup_vs_ar"] for a in rows], "o-",
                    label=f"{row_name('ddtree', batch)} (fixed budget)")
    for row, (config, _) in names.items():
        if config in POINT_MARKERS:
            a = table[(row, "all")]
            ax.plot(a["mean_tree_size"], a["speedup_vs_ar"], POINT_MARKERS[config],
                    markersize=12 if config == "bastion" else 8, label=f"{row} (realised)")
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xscale("log", base=2)  # a floor that mostly steps aside puts a mean tree under 1 node
    ax.set_xlabel("mean tree size (nodes per request-round)")
    ax.set_ylabel("speedup over ar (tokens/s)")
    labels = ax.get_legend_handles_labels()[1]
    if labels:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return labels
