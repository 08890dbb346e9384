"""``skinny_linear`` against torch's ``F.linear`` on the CPU in fp32 (bastion_ext.cpu_linear).

Two parts, one JSON:

- ``ops``: one linear layer of the embedded model's shapes (the lm_head, an MLP up and down
  projection, an attention projection) at 1 to 32 rows, the median ms of a call with its
  weight streamed from memory (a call cycles through enough copies of the weight to overflow
  the caches, as a forward through 30 layers does);
- ``decode``: ``ar`` decoding 128 tokens of held-out prompts at ``--batch`` requests, two
  copies of the model, one with its linear layers through ``F.linear`` and one through
  ``skinny_linear``, stepped one round each in turn (``bastion.bench.step_in_turn``, each timed
  by its own rounds, as ``bastion bench --interleave``); the tokens of both must be the same.

    HF_HUB_OFFLINE=1 python bench/bench_skinny_linear.py --batch 4 --groups 4 --out bench/results/skinny_linear_cpu.json
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bastion.bench import step_in_turn
from bastion.engine import Decoding, GenerationConfig, open_batch
from bastion.machine import cpu_name
from bastion.models import chat_prompt_ids, load_target
from bastion.prompts import load_prompts
from bastion_ext import ops

SHAPES = {"lm_head": (49152, 576), "mlp_up": (1536, 576), "mlp_down": (576, 1536), "attn_q": (576, 576)}
ROWS = (1, 2, 4, 8, 17, 32)
STREAMED_BYTES = 256 * 2**20  # weight copies per timed call: several times the last-level cache


def median_ms(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_ops() -> list[dict]:
    rows = []
    for name, (out_features, in_features) in SHAPES.items():
        copies = max(2, STREAMED_BYTES // (4 * out_features * in_features))
        weights = [torch.randn(out_features, in_features) for _ in range(copies)]
        for m in ROWS:
            x = torch.randn(m, in_features)
            torch_ms = median_ms(lambda: [F.linear(x, w) for w in weights]) / copies
            skinny_ms = median_ms(lambda: [ops.skinny_linear(x, w) for w in weights]) / copies
            rows.append({"layer": name, "shape": [out_features, in_features], "rows": m, "f_linear_ms": torch_ms,
                         "skinny_linear_ms": skinny_ms, "speedup": torch_ms / skinny_ms})
            print(f"{name:9s} rows {m:3d}: F.linear {torch_ms:7.3f} ms, skinny_linear {skinny_ms:7.3f} ms, {torch_ms / skinny_ms:.2f}x", flush=True)
    return rows


def time_decode(batch: int, groups: int, tokens: int) -> list[dict]:
    routed, tokenizer = load_target(None)
    plain, _ = load_target(None)
    for module in plain.modules():  # back to the class's forward: F.linear
        module.__dict__.pop("forward", None)
    prompts = load_prompts("eval")
    config = GenerationConfig(strategy="ar", max_new_tokens=tokens, stop_on_eos=False)
    rows = []
    for group in range(groups):
        chunk = prompts[group * batch:(group + 1) * batch]
        ids = [chat_prompt_ids(tokenizer, r["prompt"]) for r in chunk]
        models = {"f_linear": plain, "skinny_linear": routed}
        order = list(models) if group % 2 == 0 else list(models)[::-1]
        results = step_in_turn({name: Decoding(*open_batch(models[name], ids, config)) for name in order})
        seconds = {name: outputs[0].total_s for name, outputs in results.items()}
        same = [r.tokens for r in results["f_linear"]] == [r.tokens for r in results["skinny_linear"]]
        speedup = seconds["f_linear"] / seconds["skinny_linear"]
        rows.append({"prompts": [r["id"] for r in chunk], "f_linear_s": seconds["f_linear"],
                     "skinny_linear_s": seconds["skinny_linear"], "speedup": speedup, "same_tokens": same})
        print(f"group {group}: F.linear {seconds['f_linear']:.2f} s, skinny_linear {seconds['skinny_linear']:.2f} s, "
              f"{speedup:.3f}x, same tokens {same}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--groups", type=int, default=4, help="batches of held-out prompts, in order")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "command": " ".join(["python"] + sys.argv),
        "device": cpu_name(), "torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
        "ops": time_ops(),
        "decode": time_decode(args.batch, args.groups, args.tokens),
        "batch": args.batch, "tokens": args.tokens,
    }
    decode = result["decode"]
    result["decode_speedup_pooled"] = sum(r["f_linear_s"] for r in decode) / sum(r["skinny_linear_s"] for r in decode)
    print(f"ar at batch {args.batch}: skinny_linear {result['decode_speedup_pooled']:.3f}x F.linear (pooled)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
