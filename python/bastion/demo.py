"""Tree building alone (``make demo``): build a draft tree from a synthetic draft
distribution, print it, and time the build (the C++ op against the reference oracle).

    python -m bastion.demo [--positions 8 --k 4 --max-nodes 48 --policy argmax]

The draft distribution is peaked on the tokens of a sentence (position p favours word p, with
a few plausible alternatives and noise), so the printed tree reads like a drafter's guesses.
Token text comes from the embedded SmolLM2 tokenizer when ``transformers`` and the embedded
GGUF are present; otherwise ids are shown.
"""

from __future__ import annotations

import argparse

import torch

from bastion_ext import ops, reference
from bastion_ext.timing import time_us

SENTENCE = " The quick brown fox jumps over the lazy dog and runs into the quiet green forest before night falls"
ALTERNATIVES = " a small red cat walks under an old sleepy cow then goes toward some dark wide field after day ends"
SMOLLM2_VOCAB = 49152


def load_tokenizer():
    """The embedded target's tokenizer, or None (printing ids instead) if it cannot load."""
    try:
        from bastion.models import embedded_gguf_path
        from transformers import AutoTokenizer

        path = embedded_gguf_path()
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as err:  # noqa: BLE001  (any failure means: show ids)
        print(f"(no tokenizer: {type(err).__name__}: {err}; showing token ids)")
        return None


def draft_distribution(tokenizer, positions: int, vocab: int, seed: int) -> torch.Tensor:
    """(1, positions, vocab) fp32 logits peaked on the sentence's tokens, or on random ids."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((1, positions, vocab), generator=gen)
    if tokenizer is not None:
        main = tokenizer.encode(SENTENCE, add_special_tokens=False)
        alt = tokenizer.encode(ALTERNATIVES, add_special_tokens=False)
    else:
        main = torch.randint(0, vocab, (positions,), generator=gen).tolist()
        alt = torch.randint(0, vocab, (positions + 2,), generator=gen).tolist()
    for p in range(positions):
        # Against ~V * e^0.5 of noise mass these give roughly 0.6 / 0.25 / 0.1.
        logits[0, p, main[p % len(main)]] += 14.0
        logits[0, p, alt[p % len(alt)]] += 13.0
        logits[0, p, main[(p + 1) % len(main)]] += 12.0  # a drafter skipping a word
    return logits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=8, help="draft positions P")
    parser.add_argument("--k", type=int, default=4, help="top-K per position")
    parser.add_argument("--max-nodes", type=int, default=48, help="tree capacity N")
    parser.add_argument("--policy", choices=list(ops.POLICIES), default="argmax")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tokenizer", action="store_true", help="show token ids only")
    parser.add_argument("--repeats", type=int, default=5, help="timed builds per implementation")
    args = parser.parse_args(argv)

    tokenizer = None if args.no_tokenizer else load_tokenizer()
    vocab = len(tokenizer) if tokenizer is not None else SMOLLM2_VOCAB
    logits = draft_distribution(tokenizer, args.positions, vocab, args.seed)
    # A CPU-like latency table: a verify of n nodes costs about 1 + n / 24 single steps.
    latency = (1.0 + torch.arange(1, args.max_nodes + 1, dtype=torch.float32) / 24.0)[None]
    kwargs = {"policy": args.policy, "latency_table": None if args.policy == "fixed" else latency}

    tree = ops.build_tree(logits, args.k, args.max_nodes, **kwargs)
    print(f"draft distribution: B=1 P={args.positions} V={vocab} fp32; K={args.k}, N={args.max_nodes}, policy={args.policy}")
    print(repr(tree).splitlines()[0])
    print(tree.pretty(tokenizer))

    ref = reference.build_tree_ref(logits, args.k, args.max_nodes, **kwargs)
    same = all(torch.equal(t, getattr(ref, name)) for name, t in tree.tensors().items())
    print(f"\nreference tree identical: {same}")
    cpp = time_us(lambda: ops.build_tree(logits, args.k, args.max_nodes, **kwargs), "cpu", args.repeats, warmup=1)
    oracle = time_us(lambda: reference.build_tree_ref(logits, args.k, args.max_nodes, **kwargs), "cpu", args.repeats, warmup=1)
    print(f"build time (median of {args.repeats}, {torch.get_num_threads()} threads): C++ {cpp['median_us'] / 1e3:.3f} ms, "
          f"reference {oracle['median_us'] / 1e3:.1f} ms, ratio {oracle['median_us'] / cpp['median_us']:.0f}x")


if __name__ == "__main__":
    main()
