"""The speedup floor's cost where trees pay (issue 21): bastion with and without the floor
beside ddtree@8 and ar, on the same eval prompts in one process, the committed drafter and the
cached latency calibration (as ``bastion generate`` loads them, with fresh online corrections
for every run, as a fresh process has); and bastion with the committed drafter's layers drawn
afresh (random weights), which the floor must make fall back. Each repeat runs
every configuration on every prompt, interleaved; the table gives the median over repeats of
each configuration's tokens/s (all its tokens over all its seconds). Run with
OMP_NUM_THREADS=1 on a shared CPU.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/bench_floor.py --per-category 2 --repeats 3 --records /tmp/floor.jsonl
"""

import argparse
import dataclasses
import json
import statistics

import torch

from bastion.calibrate import load_or_calibrate
from bastion.drafter import load_drafter
from bastion.engine import GenerationConfig, generate
from bastion.machine import cpu_name
from bastion.models import chat_prompt_ids, load_target
from bastion.prompts import load_prompts
from bastion_ext.latency import OnlineCorrection

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=2, help="eval prompts per category")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU; all cores when quiet)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--records", help="write every bastion round here (JSON lines)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which of: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    torch.set_num_threads(args.threads)
    model, tokenizer = load_target(None, dtype=torch.bfloat16)
    drafter = load_drafter(None, model)
    drafters = {"ar": None, "bastion random drafter": random_drafter(model)}
    latency = load_or_calibrate(model, drafter)
    rows = load_prompts("eval")
    categories = list(dict.fromkeys(r["category"] for r in rows))
    prompts = [r for c in categories for r in [r for r in rows if r["category"] == c][:args.per_category]]
    ids = [chat_prompt_ids(tokenizer, r["prompt"]) for r in prompts]
    rates = {name: [] for name in configs}
    stats = {name: {"rounds": 0, "drafted": 0, "nodes": 0, "identical": 0, "runs": 0} for name in configs}
    records = open(args.records, "w") if args.records else None
    for repeat in range(args.repeats):
        tokens = {name: 0 for name in configs}
        seconds = {name: 0.0 for name in configs}
        for row, prompt in zip(prompts, ids):
            reference = None
            for name, fields in configs.items():
                config = GenerationConfig(max_new_tokens=args.max_new_tokens, stop_on_eos=False, **fields)
                fresh = dataclasses.replace(latency, correction=OnlineCorrection(), plain_correction=OnlineCorrection())
                result = generate(model, prompt, config, drafter=drafters.get(name, drafter), latency=fresh)
                reference = result.tokens if name == "ar" else reference
                tokens[name] += len(result.tokens)
                seconds[name] += result.total_s
                s = stats[name]
                s["runs"] += 1
                s["identical"] += result.tokens == reference
                s["rounds"] += len(result.rounds)
                s["drafted"] += sum(r["n_nodes"] > 0 for r in result.rounds)
                s["nodes"] += sum(r["n_nodes"] for r in result.rounds)
                if records and fields["strategy"] == "bastion":
                    for r in result.rounds:
                        r = {k: v for k, v in r.items() if k not in ("topk_ids", "topk_logprobs", "target_tokens", "accepted_tokens")}
                        records.write(json.dumps(dict(r, config=name, prompt=row["id"], repeat=repeat)) + "\n")
        for name in configs:
            rates[name].append(tokens[name] / seconds[name])
        print(f"repeat {repeat}: " + ", ".join(f"{name} {rates[name][-1]:.2f}" for name in configs), flush=True)
    ar = statistics.median(rates["ar"]) if "ar" in rates else None
    print(f"{cpu_name()}, {torch.get_num_threads()} thread(s), bf16, {len(prompts)} eval prompts "
          f"({', '.join(r['id'] for r in prompts)}) x {args.max_new_tokens} tokens, T=0, {args.repeats} repeats")
    print(f"{'config':<18}{'tok/s':>8}{'vs ar':>7}{'min':>8}{'max':>8}{'drafted':>9}{'tree':>6}{'=ar':>7}")
    for name in configs:
        s, median = stats[name], statistics.median(rates[name])
        drafted = s["drafted"] / s["rounds"] if s["rounds"] else 0.0
        tree = s["nodes"] / s["drafted"] if s["drafted"] else 0.0
        print(f"{name:<18}{median:>8.2f}{median / ar if ar else float('nan'):>6.2f}x{min(rates[name]):>8.2f}{max(rates[name]):>8.2f}"
              f"{drafted:>9.2f}{tree:>6.1f}{s['identical']:>4}/{s['runs']}")


if __name__ == "__main__":
    main()
