"""Requests joining a running batch against fixed chunks: total tokens/s over held-out prompts
whose answers end at different lengths (natural EOS), ``--batch-size`` in flight.

``joining``: one ``generate_batch(..., batch_size=B)`` over every prompt (a waiting prompt takes
the slot of a finished request); ``chunks``: ``generate_batch`` over each run of B prompts in
turn (a chunk waits for its longest answer). Outputs are checked equal between the modes.
The ``chunks`` mode runs against any checkout of the engine (``PYTHONPATH``), so the engine
before slots can be measured with the same script.

    HF_HUB_OFFLINE=1 python bench/bench_joining.py --strategies ar,bastion --prompts 32 \\
        --batch-size 4 --max-new-tokens 160 --out bench/results/joining_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bastion.calibrate import load_or_calibrate
from bastion.drafter import load_drafter
from bastion.dtypes import resolve_dtype
from bastion.engine import GenerationConfig, generate_batch
from bastion.machine import cpu_name
from bastion.models import chat_prompt_ids, load_target
from bastion.prompts import CATEGORIES, load_prompts


def timed(run) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default="ar,bastion")
    parser.add_argument("--modes", default="joining,chunks")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_target(None, dtype=resolve_dtype(args.dtype, "cpu"))
    drafter = load_drafter(None, model)
    latency = load_or_calibrate(model, drafter, log=lambda m: print(m, file=sys.stderr))
    by_category = [load_prompts("eval", c) for c in CATEGORIES]
    rows = [r for group in zip(*by_category) for r in group][: args.prompts]
    prompts = [chat_prompt_ids(tokenizer, r["prompt"]) for r in rows]
    eos = (tokenizer.eos_token_id,)
    size = args.batch_size
    cells = []
    for strategy in args.strategies.split(","):
        config = GenerationConfig(strategy=strategy, max_new_tokens=args.max_new_tokens)
        outputs = {}
        for mode in args.modes.split(","):
            if mode == "joining":
                run = lambda: [r.tokens for r in generate_batch(model, prompts, config, drafter, latency, eos, batch_size=size)]  # noqa: E731
            else:
                run = lambda: [r.tokens for start in range(0, len(prompts), size)  # noqa: E731
                               for r in generate_batch(model, prompts[start:start + size], config, drafter, latency, eos)]
            tokens, seconds = timed(run)
            outputs[mode] = tokens
            total = sum(len(t) for t in tokens)
            cells.append({"strategy": strategy, "mode": mode, "new_tokens": total, "seconds": seconds,
                          "tokens_per_s": total / seconds, "answer_lengths": [len(t) for t in tokens]})
            print(f"{strategy:>8} {mode:>8}: {total} tokens in {seconds:.1f} s = {total / seconds:.2f} tokens/s", flush=True)
        if len(outputs) == 2:
            same = sum(a == b for a, b in zip(*outputs.values()))
            print(f"{strategy:>8}: {same}/{len(prompts)} outputs identical between the modes", flush=True)
            cells[-1]["identical_to_previous_mode"] = same
    report = {"device": cpu_name(), "threads": torch.get_num_threads(), "dtype": str(model.dtype),
              "torch": torch.__version__, "command": " ".join(sys.argv), "prompts": len(prompts), "batch_size": size,
              "max_new_tokens": args.max_new_tokens, "cells": cells}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
