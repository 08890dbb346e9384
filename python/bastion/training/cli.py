"""``bastion train-drafter``: the command line of :mod:`bastion.training`."""

from __future__ import annotations

import argparse
import json
import sys

from .config import DEFAULT_LAYER_IDS, WARM_STARTS, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    from bastion.dtypes import CHOICES as DTYPES

    d = TrainConfig(out=".")
    p = argparse.ArgumentParser(prog="bastion train-drafter",
                                description="distil a DFlash drafter for the target from its own greedy continuations (python/bastion/weights/RECIPE.md)")
    p.add_argument("--out", required=True, help="work directory: feature cache, resumable training state, final drafter")
    p.add_argument("--target", default=None, help="target model path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="target dtype and training autocast (auto: bf16 where fast)")
    p.add_argument("--data-dir", default=None, help="where the {train,eval}_tokens/ chunks are read or written (default: the committed ones)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--stop-after", choices=("data", "train"), default=None, help="stop after this stage")
    p.add_argument("--gen-minutes", type=float, default=None, help="start no new generation chunk after this many minutes")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="length cap of each greedy continuation")
    p.add_argument("--gen-batch", type=int, default=d.gen_batch)
    p.add_argument("--max-train-prompts", type=int, default=None, help="train on the first N sequences in chunk order")
    p.add_argument("--max-eval-prompts", type=int, default=None, help="load only the first N held-out sequences in chunk order")
    p.add_argument("--soft-topk", type=int, default=d.soft_topk, help="teacher logits kept per token for soft labels")
    p.add_argument("--layers", type=int, default=d.layers, help="drafter decoder layers")
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--draft-vocab", type=int, default=d.draft_vocab, help="reduced draft vocabulary (most frequent tokens, then lowest ids; 0: all)")
    p.add_argument("--target-layer-ids", default=",".join(map(str, DEFAULT_LAYER_IDS)), help="comma-separated 0-based target layers")
    p.add_argument("--warm-start", choices=WARM_STARTS, default=d.warm_start, help="start the drafter's layers from the target's")
    p.add_argument("--decay", type=float, default=d.decay, help="loss weight decay per drafted position")
    p.add_argument("--soft", type=float, default=d.soft, help="share of the soft-label (teacher top-k) loss")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--seqs-per-step", type=int, default=d.seqs_per_step, help="sequences per step (all their roots)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up, a fraction of the steps")
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out sequences only")
    p.add_argument("--export", default=None, help="also write the final drafter here")
    p.add_argument("--evaluate", default=None, metavar="DRAFTER_DIR",
                   help="only score this drafter directory ('default': the committed one) on the held-out split")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    try:
        layer_ids = tuple(int(x) for x in args.target_layer_ids.split(","))
    except ValueError:
        raise ValueError(f"--target-layer-ids must be comma-separated integers, got {args.target_layer_ids!r}") from None
    names = {f.replace("-", "_") for f in ("target", "device", "dtype", "data-dir", "threads", "gen-minutes", "max-new-tokens",
                                           "gen-batch", "max-train-prompts", "max-eval-prompts", "soft-topk", "layers",
                                           "block-size", "draft-vocab", "warm-start", "decay", "soft", "epochs",
                                           "seqs-per-step", "lr", "warmup", "save-every", "seed", "eval-limit")}
    return TrainConfig(out=args.out, target_layer_ids=layer_ids, **{k: getattr(args, k) for k in names})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bastion train-drafter``; returns the exit code."""
    from .loop import run

    args = build_parser().parse_args(argv)
    try:
        summary = run(config_from_args(args), stop_after=args.stop_after, evaluate_only=args.evaluate, export_to=args.export)
    except (ValueError, FileNotFoundError) as err:
        print(f"bastion train-drafter: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
