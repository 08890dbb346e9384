"""The speedup floor's cost where trees pay (issue 21): bastion with and without the floor
beside ddtree@8 and ar, on the same eval prompts in one process, the committed drafter and the
cached latency calibration (as ``bastion generate`` loads them, with fresh online corrections
for every run, as a fresh process has); and bastion with the committed drafter's layers drawn
afresh (random weights), which the floor must make fall back. Each repeat runs
every configuration on every prompt, interleaved (with ``--interleave``, the configurations
other than ``ar`` one round each in turn, each timed by its own rounds: the floor's cost is a
ratio of two of them); the table gives the median over repeats of each configuration's
tokens/s (all its tokens over all its seconds). Run with OMP_NUM_THREADS=1 on a shared CPU.

In bf16 a configuration's answers follow its tree sizes (the verify's shapes round
differently), so two configurations decode different texts and their trees accept different
amounts; the floor's cost is also given over the prompts where both decoded the same text.
``--oracle HIT,SECOND`` replaces the drafter by ``bastion.drafter.oracle.OracleDrafter`` over
``ar``'s own tokens (a drafter of set quality: the true token is its top candidate with
chance HIT, its second with chance SECOND); in fp32 every configuration then decodes ``ar``'s
text, and the floor's cost is measured on identical outputs.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/bench_floor.py --per-category 2 --repeats 3 --records /tmp/floor.jsonl
    HF_HUB_OFFLINE=1 python bench/bench_floor.py --threads 2 --dtype fp32 --oracle 0.4,0.2 --configs "ar,bastion,bastion no floor" --interleave
"""

import argparse
import dataclasses
import json
import statistics

import torch

from bastion.calibrate import load_or_calibrate
from bastion.drafter import load_drafter
from bastion.drafter.oracle import OracleDrafter
from bastion.bench import step_in_turn
from bastion.engine import Decoding, GenerationConfig, generate, open_batch
from bastion.machine import cpu_name
from bastion.models import chat_prompt_ids, load_target
from bastion.prompts import load_prompts
from bastion_ext.latency import OnlineCorrection

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CONFIGS = {  # name -> GenerationConfig fields
    "ar": {"strategy": "ar"},
    "ddtree@8": {"strategy": "ddtree", "budget": 8},
    "bastion": {"strategy": "bastion"},
    "bastion no floor": {"strategy": "bastion", "speedup_floor": False},
    "bastion random drafter": {"strategy": "bastion"},
}


def random_drafter(model):
    """The committed drafter with its own layers' linear weights drawn afresh (seed 0), so that it
    accepts next to nothing; the target's embeddings and head stay shared."""
    twin = load_drafter(None, model)
    torch.manual_seed(0)
    for module in [*twin.layers.modules(), twin.fc]:
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    return twin


def hit_and_second(text: str) -> tuple[float, float]:
    """--oracle's value: two chances, "HIT,SECOND"."""
    values = tuple(float(x) for x in text.split(","))
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected HIT,SECOND, got {text!r}")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=2, help="eval prompts per category")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU; all cores when quiet)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--records", help="write every bastion round here (JSON lines)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which of: " + ", ".join(CONFIGS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--interleave", action="store_true",
                        help="step the configurations other than ar one round each in turn (bastion bench --interleave)")
    parser.add_argument("--oracle", type=hit_and_second, metavar="HIT,SECOND",
                        help="every drafting configuration drafts with an oracle of ar's tokens (ar first in --configs)")
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    if args.oracle and next(iter(configs)) != "ar":
        parser.error("--oracle drafts ar's tokens: put ar first in --configs")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_target(None, dtype=DTYPES[args.dtype])
    drafter = load_drafter(None, model)
    drafters = {"ar": None, "bastion random drafter": random_drafter(model)}
    latency = load_or_calibrate(model, drafter)
    rows = load_prompts("eval")
    categories = list(dict.fromkeys(r["category"] for r in rows))
    prompts = [r for c in categories for r in [r for r in rows if r["category"] == c][:args.per_category]]
    ids = [chat_prompt_ids(tokenizer, r["prompt"]) for r in prompts]
    rates = {name: [] for name in configs}
    stats = {name: {"rounds": 0, "drafted": 0, "nodes": 0} for name in configs}
    runs = {}  # (config, prompt index, repeat) -> (tokens, seconds)
    records = open(args.records, "w") if args.records else None
    for repeat in range(args.repeats):
        for index, (row, prompt) in enumerate(zip(prompts, ids)):
            reference = None
            results, opened = {}, {}
            for name, fields in configs.items():
                config = GenerationConfig(max_new_tokens=args.max_new_tokens, stop_on_eos=False, **fields)
                fresh = dataclasses.replace(latency, correction=OnlineCorrection(), plain_correction=OnlineCorrection())
                chosen = drafters.get(name, drafter)
                if args.oracle and chosen is not None:
                    chosen = OracleDrafter([prompt + reference], model.config.vocab_size, drafter.block_size, *args.oracle,
                                            seed=repeat * len(prompts) + index)
                if args.interleave and name != "ar":  # ar runs first, alone: the oracle drafts its tokens
                    opened[name] = Decoding(*open_batch(model, [prompt], config, chosen, fresh))
                    continue
                results[name] = generate(model, prompt, config, drafter=chosen, latency=fresh)
                reference = results[name].tokens if name == "ar" else reference
            results.update({name: outputs[0] for name, outputs in step_in_turn(opened).items()})
            for name, result in results.items():
                runs[name, index, repeat] = (result.tokens, result.total_s)
                s = stats[name]
                s["rounds"] += len(result.rounds)
                s["drafted"] += sum(r["n_nodes"] > 0 for r in result.rounds)
                s["nodes"] += sum(r["n_nodes"] for r in result.rounds)
                if records and configs[name]["strategy"] == "bastion":
                    for r in result.rounds:
                        r = {k: v for k, v in r.items() if k not in ("topk_ids", "topk_logprobs", "target_tokens", "accepted_tokens")}
                        records.write(json.dumps(dict(r, config=name, prompt=row["id"], repeat=repeat)) + "\n")
        for name in configs:
            rates[name].append(rate(runs, name, range(len(prompts)), [repeat]))
        print(f"repeat {repeat}: " + ", ".join(f"{name} {rates[name][-1]:.2f}" for name in configs), flush=True)
    ar = statistics.median(rates["ar"]) if "ar" in rates else None
    print(f"{cpu_name()}, {torch.get_num_threads()} thread(s), {len(prompts)} eval prompts "
          f"({', '.join(r['id'] for r in prompts)}) x {args.max_new_tokens} tokens, T=0, {args.repeats} repeats, {args.dtype}"
          + (f", oracle drafter (hit {args.oracle[0]}, second {args.oracle[1]})" if args.oracle else ""))
    print(f"{'config':<18}{'tok/s':>8}{'vs ar':>7}{'min':>8}{'max':>8}{'drafted':>9}{'tree':>6}{'=ar':>7}")
    every = [(i, r) for i in range(len(prompts)) for r in range(args.repeats)]
    for name in configs:
        s, median = stats[name], statistics.median(rates[name])
        identical = sum(runs[name, i, r][0] == runs["ar", i, r][0] for i, r in every) if "ar" in configs else 0
        drafted = s["drafted"] / s["rounds"] if s["rounds"] else 0.0
        tree = s["nodes"] / s["drafted"] if s["drafted"] else 0.0
        print(f"{name:<18}{median:>8.2f}{median / ar if ar else float('nan'):>6.2f}x{min(rates[name]):>8.2f}{max(rates[name]):>8.2f}"
              f"{drafted:>9.2f}{tree:>6.1f}{identical:>4}/{len(every)}")
    if "bastion" in configs and "bastion no floor" in configs:
        print(floor_cost(runs, len(prompts), args.repeats))


def rate(runs: dict, name: str, indices, repeats) -> float:
    """Tokens/s of configuration ``name`` over the prompts ``indices`` in the repeats ``repeats``
    (``runs``: (config, prompt index, repeat) -> (tokens, seconds))."""
    chosen = [runs[name, i, r] for i in indices for r in repeats]
    return sum(len(tokens) for tokens, _ in chosen) / sum(seconds for _, seconds in chosen)


def floor_cost(runs: dict, prompts: int, repeats: int) -> str:
    """The floor's cost (1 - bastion's tokens/s over bastion without it's), over every prompt and
    over the prompts whose two outputs were the same text in every repeat."""
    def cost(indices):
        with_floor, without = (rate(runs, name, indices, range(repeats)) for name in ("bastion", "bastion no floor"))
        return f"{1 - with_floor / without:.1%} ({with_floor:.2f} vs {without:.2f} tok/s)"
    same = [i for i in range(prompts) if all(runs["bastion", i, r][0] == runs["bastion no floor", i, r][0] for r in range(repeats))]
    line = f"cost of the floor: {cost(range(prompts))} over all {prompts} prompts"
    return line + (f"; {cost(same)} over the {len(same)} with the same output" if same else "; no prompt had the same output")


if __name__ == "__main__":
    main()
