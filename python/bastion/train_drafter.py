"""``bastion train-drafter``: distil a small DFlash drafter for a target from the target's own
greedy continuations of the documented prompt sets (``bastion/prompts``).

Steps, each resumable (``--out`` holds the work; ``--data-dir`` the committed token chunks):
1. data: greedy continuations of the train and eval prompts (chat template), chunk by chunk
   (``bastion.train_data``), the selected layers' outputs captured while generating (or
   recomputed by one teacher-forced forward for chunks generated elsewhere);
2. training: random roots in the generated part of each sequence; the drafter predicts the
   target's next ``block_size - 1`` argmax tokens from the context features before the root
   and [root, mask ...]; position-weighted cross-entropy; AdamW; state saved to
   ``train_state.safetensors`` + ``train_state.json`` every ``--save-every`` steps;
3. export (config.json + model.safetensors, bf16) and held-out evaluation of the exported
   weights: mean tokens per round of a single path and of a small best-first tree, walked
   against the target's greedy output, and per-position top-1 match rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.drafter import DFlashConfig, DFlashDrafter, load_drafter, select_features
from bastion.prompts import load_prompts
from bastion.train_data import TokenData, generate_token_data

DEFAULT_LAYER_IDS = (1, 10, 19, 28)
MASK_TOKEN = "<empty_output>"  # a special token SmolLM2 never emits in chat; any fixed id works


@dataclass
class Sequence:
    """One training/eval sequence: prompt + greedy continuation.

    tokens: (S,) int64; features: (S, F) bf16/fp16 selected hidden states; targets: (S,) int64,
    the target's argmax after each prefix (targets[t] is greedy's token at t + 1); prompt_len: int.
    """

    tokens: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor
    prompt_len: int


# -- data ------------------------------------------------------------------------------------


def split_sequences(split: str, target, tokenizer, args, layer_ids, deadline: float | None) -> list[Sequence]:
    """The split's training sequences: greedy continuations from the committed chunks in
    ``--data-dir/<split>_tokens`` (generating missing chunks until ``deadline``), with the
    target features kept when they were generated here, else recomputed."""
    from safetensors.torch import load_file

    limit = args.max_train_prompts if split == "train" else args.max_eval_prompts
    rows = load_prompts(split)[:limit]
    # Keyed by the layers: features of other layers are never mistaken for these.
    features_dir = Path(args.out) / f"features_{split}_L{'-'.join(map(str, layer_ids))}"
    t0 = time.perf_counter()
    # Hooks see a layer's raw output; HF reports the last layer's normed, so that one is recomputed.
    tap = layer_ids if max(layer_ids) < target.config.num_hidden_layers - 1 else None
    parts = generate_token_data(target, tokenizer, rows, args.max_new_tokens, args.gen_batch, Path(args.data_dir) / f"{split}_tokens",
                                desc=f"data {split}", feature_layers=tap, features_dir=features_dir, deadline=deadline)
    print(f"{split}: {sum(len(p) for p in parts)} of {len(rows)} prompts answered, "
          f"{sum(p.generated_tokens for p in parts)} generated tokens ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    seqs: list[Sequence] = []
    for index, part in enumerate(parts):
        path = features_dir / f"features_{index:05d}.safetensors"
        if not path.is_file():
            seqs += featurize(target, part, layer_ids, desc=f"features {split} chunk {index}")
            continue
        features = load_file(path)["features"]
        for i in range(len(part)):
            tokens = part.sequence(i).long()
            # Decoded greedily: the next token is the target's argmax; none after the last.
            targets = torch.cat([tokens[1:], torch.tensor([-100])])
            seqs.append(Sequence(tokens, features[int(part.offsets[i]):int(part.offsets[i + 1])], targets, int(part.prompt_lens[i])))
    return seqs


@torch.no_grad()
def featurize(target, data: TokenData, layer_ids, batch_tokens: int = 4096, desc: str = "features") -> list[Sequence]:
    """Teacher-forced target forwards over every sequence (right-padded batches of about
    ``batch_tokens`` tokens, similar lengths together): the selected layers' hidden states
    (the target's dtype) and the target's argmax at every position."""
    from tqdm import tqdm

    device = target.get_input_embeddings().weight.device
    lengths = (data.offsets[1:] - data.offsets[:-1]).tolist()
    order = sorted(range(len(data)), key=lambda i: lengths[i])
    out: list[Sequence | None] = [None] * len(data)
    bar = tqdm(total=sum(lengths), desc=desc, unit="tok", unit_scale=True)
    i = 0
    while i < len(order):
        group = [order[i]]
        while i + len(group) < len(order) and lengths[order[i + len(group)]] * (len(group) + 1) <= batch_tokens:
            group.append(order[i + len(group)])
        width = max(lengths[j] for j in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        for row, j in enumerate(group):
            ids[row, :lengths[j]] = data.sequence(j).long()
        mask = (torch.arange(width)[None] < torch.tensor([lengths[j] for j in group])[:, None]).long()
        result = target(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        feats = select_features(result.hidden_states, layer_ids)
        argmax = result.logits.argmax(-1)
        for row, j in enumerate(group):
            n = lengths[j]
            out[j] = Sequence(ids[row, :n], feats[row, :n].cpu().clone(), argmax[row, :n].cpu(), int(data.prompt_lens[j]))
        bar.update(sum(lengths[j] for j in group))
        i += len(group)
    bar.close()
    return out


# -- model -----------------------------------------------------------------------------------


def drafter_config_for(target, tokenizer, num_layers: int, block_size: int, layer_ids) -> DFlashConfig:
    """A drafter config with the target's hidden size, attention shapes, MLP width and rotary
    base (its embeddings and lm_head are the target's)."""
    c = target.config
    rope = getattr(c, "rope_parameters", None) or {}
    return DFlashConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads, vocab_size=c.vocab_size,
        block_size=block_size, mask_token_id=tokenizer.convert_tokens_to_ids(MASK_TOKEN), target_layer_ids=tuple(layer_ids),
        num_target_layers=c.num_hidden_layers, rms_norm_eps=c.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
        max_position_embeddings=c.max_position_embeddings,
    )


# -- training --------------------------------------------------------------------------------


def frequent_tokens(seqs: list[Sequence], count: int, vocab_size: int) -> torch.Tensor:
    """(count,) int64, increasing: the reduced draft vocabulary. Every token of ``seqs``
    (prompts and continuations) by frequency, then the lowest unseen ids: a BPE vocabulary
    numbers its merges roughly by frequency, and the drafter can still score a token it never
    saw as a label through the target's own lm_head row."""
    if not 1 <= count <= vocab_size:
        raise ValueError(f"--draft-vocab must be in [1, {vocab_size}], got {count}")
    counts = torch.bincount(torch.cat([s.tokens for s in seqs]).long(), minlength=vocab_size)[:vocab_size]
    order = sorted(range(vocab_size), key=lambda t: (-int(counts[t]), t))[:count]
    return torch.tensor(sorted(order), dtype=torch.long)


def position_weights(block_size: int, decay: float) -> torch.Tensor:
    """(block_size - 1,) fp32 loss weights decay**k, mean 1: early positions decide acceptance."""
    w = decay ** torch.arange(block_size - 1, dtype=torch.float32)
    return w / w.mean()


def block_labels(seq: Sequence, anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """(M, block_size - 1) int64: targets[a + k] for k = 0.., -100 past the sequence's end."""
    idx = anchors[:, None] + torch.arange(block_size - 1)
    return torch.where(idx < len(seq.targets), seq.targets[idx.clamp(max=len(seq.targets) - 1)], -100)


def batch_loss(drafter: DFlashDrafter, seqs: list[Sequence], anchors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Position-weighted cross-entropy of the drafter's blocks over several sequences at once.

    seqs: B sequences (right-padded together; a block never sees past its root, so padding is
    never seen); anchors: B tensors (M,) of root indices, the same M for every sequence;
    weights: (block_size - 1,) per-position loss weights. Returns a scalar.
    """
    device = drafter.fc.weight.device
    width = max(len(s.tokens) for s in seqs)
    tokens = torch.zeros((len(seqs), width), dtype=torch.long)
    features = seqs[0].features.new_zeros((len(seqs), width, seqs[0].features.shape[1]))
    for row, s in enumerate(seqs):
        tokens[row, :len(s.tokens)] = s.tokens
        features[row, :len(s.tokens)] = s.features
    positions = torch.arange(width, device=device).expand(len(seqs), -1)
    roots = torch.stack(anchors).to(device)
    logits = drafter.anchor_logits(features.to(device), positions, tokens.to(device), roots)
    labels = drafter.to_draft_ids(torch.stack([block_labels(s, a, drafter.block_size) for s, a in zip(seqs, anchors)]).to(device))
    ce = F.cross_entropy(logits.flatten(0, 2).float(), labels.flatten(), ignore_index=-100, reduction="none").view_as(labels)
    w = weights.to(device) * (labels != -100)
    return (ce * w).sum() / w.sum().clamp(min=1)


def sequence_loss(drafter: DFlashDrafter, seq: Sequence, anchors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Position-weighted cross-entropy of the drafter's blocks rooted at ``anchors`` (M,) of one sequence."""
    return batch_loss(drafter, [seq], [anchors], weights)


def sample_anchors(seq: Sequence, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` roots in the generated part (a root needs one later target): distinct while
    the part has that many, the rest drawn again from it. Sorted, (count,) int64."""
    first, last = seq.prompt_len, len(seq.tokens) - 1
    span = last - first + 1
    picks = torch.randperm(span, generator=generator)[:count]
    if len(picks) < count:
        picks = torch.cat([picks, torch.randint(span, (count - len(picks),), generator=generator)])
    return (first + picks).sort().values


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_train_state(out: Path, drafter: DFlashDrafter, opt: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
    """Model and AdamW moments as safetensors (no pickle), step and loss history as JSON."""
    from safetensors.torch import save_file

    names = {p: n for n, p in drafter.named_parameters()}
    tensors = {f"model.{n}": t.detach().clone() for n, t in drafter.state_dict().items()}
    for p, st in opt.state.items():
        for key, value in st.items():
            tensors[f"adam.{key}.{names[p]}"] = value.detach().clone().reshape(value.shape)
    tmp = out / "train_state.safetensors.tmp"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, out / "train_state.safetensors")
    (out / "train_state.json").write_text(json.dumps({"step": step, "losses": losses}))


def load_train_state(out: Path, drafter: DFlashDrafter, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    if not (out / "train_state.json").is_file():
        return 0, []
    meta = json.loads((out / "train_state.json").read_text())
    tensors = load_file(out / "train_state.safetensors")
    params = dict(drafter.named_parameters())
    drafter.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, slot, name = key.split(".", 2)
            opt.state[params[name]][slot] = value.to(params[name].device)
    return int(meta["step"]), list(meta["losses"])


# -- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(drafter: DFlashDrafter, seqs: list[Sequence], tree_budgets: tuple[int, ...] = (16, 32), tree_width: int = 8,
             chunk: int = 64) -> dict:
    """Held-out acceptance, walked against the target's greedy output.

    Rounds start at the first generated token and advance by the tokens each round commits
    (accepted + 1), as the engine's loop does; a round whose block would run past the sequence's
    end is not counted. ``dflash``: the drafter's argmax path; ``tree<n>``: the best-first tree
    of ``n`` nodes (each of ``tree_budgets``) over the top-``tree_width`` candidates per position
    (``bastion_ext.reference.expand_lattice_ref``). Also the unconditional top-1 match rate per position.
    """
    from bastion_ext.reference import expand_lattice_ref

    gamma, device = drafter.block_size, drafter.fc.weight.device
    rounds_of = {"path": [], **{n: [] for n in tree_budgets}}
    hits, counts = torch.zeros(gamma - 1), torch.zeros(gamma - 1)
    for seq in seqs:
        last_root = len(seq.tokens) - gamma + 1  # roots whose whole block has a true target
        if last_root <= seq.prompt_len:
            continue
        anchors = torch.arange(seq.prompt_len, last_root)
        logits = torch.cat([
            drafter.anchor_logits(seq.features[None].to(device), torch.arange(len(seq.tokens), device=device)[None],
                                  seq.tokens[None].to(device), part[None].to(device))[0].cpu()
            for part in anchors.split(chunk)
        ])
        labels = drafter.to_draft_ids(block_labels(seq, anchors, gamma))
        match = logits.argmax(-1) == labels
        hits += match.float().sum(0)
        counts += len(anchors)
        leading = match.int().cumprod(1).sum(1)
        logq, cand = logits.log_softmax(-1).topk(tree_width, dim=-1)
        for walk, rounds in rounds_of.items():
            i = 0
            while i < len(anchors):
                if walk == "path":
                    accepted = int(leading[i])
                else:
                    tree = expand_lattice_ref(cand[i].tolist(), logq[i].tolist(), walk)
                    accepted, node = 0, -1
                    while True:
                        want = int(labels[i, accepted]) if accepted < gamma - 1 else None
                        child = next((j for j in range(tree.n_nodes) if tree.parents[j] == node and tree.tokens[j] == want), None)
                        if child is None:
                            break
                        node, accepted = child, accepted + 1
                rounds.append(accepted + 1)
                i += accepted + 1
    path_rounds = rounds_of.pop("path")
    return {
        "sequences": len(seqs),
        "dflash_mean_tokens_per_round": sum(path_rounds) / max(1, len(path_rounds)),
        "dflash_rounds": len(path_rounds),
        **{f"tree{n}_mean_tokens_per_round": sum(r) / max(1, len(r)) for n, r in rounds_of.items()},
        "tree_width": tree_width,
        "top1_match_rate_by_position": [round(float(x), 4) for x in hits / counts.clamp(min=1)],
    }


# -- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from bastion.dtypes import CHOICES as DTYPES
    from bastion.weights import DEFAULT_DRAFTER_DIR

    p = argparse.ArgumentParser(prog="bastion train-drafter", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work directory: generation chunks, resumable training state, final drafter")
    p.add_argument("--target", default=None, help="target model path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="target dtype and training autocast (auto: bf16 where fast)")
    p.add_argument("--data-dir", default=str(DEFAULT_DRAFTER_DIR), help="where the {train,eval}_tokens/ chunks are read or written")
    p.add_argument("--stop-after", choices=("data", "train"), default=None, help="stop after this stage")
    p.add_argument("--gen-minutes", type=float, default=None, help="start no new generation chunk after this many minutes (train on what is done)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=2, help="drafter decoder layers")
    p.add_argument("--draft-vocab", type=int, default=16384, help="reduced draft vocabulary of N tokens (most frequent in the data, then lowest ids; 0: all)")
    p.add_argument("--target-layer-ids", default=",".join(map(str, DEFAULT_LAYER_IDS)), help="comma-separated 0-based target layers")
    p.add_argument("--max-new-tokens", type=int, default=384, help="length cap of each greedy continuation")
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--max-train-prompts", type=int, default=None)
    p.add_argument("--max-eval-prompts", type=int, default=None)
    p.add_argument("--anchors", type=int, default=32, help="roots per sequence per step")
    p.add_argument("--seqs-per-step", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--decay", type=float, default=0.85, help="loss weight decay per block position")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--export", default=None, help="also copy the final config.json + model.safetensors here")
    p.add_argument("--eval-limit", type=int, default=None, help="with --evaluate: only the first N held-out sequences")
    p.add_argument("--evaluate", default=None, metavar="DRAFTER_DIR",
                   help="only score this drafter directory ('default': the committed one) on the held-out split")
    return p


def train_drafter(args: argparse.Namespace) -> dict:
    """Run data generation (if not done), training (resuming), export and evaluation; returns
    the evaluation summary (also written to ``<out>/eval.json``)."""
    from tqdm import tqdm

    from bastion.dtypes import resolve_dtype
    from bastion.models import load_target

    if args.steps < 0 or args.block_size < 2 or args.layers < 1:
        raise ValueError(f"need --steps >= 0, --block-size >= 2, --layers >= 1; got {args.steps}, {args.block_size}, {args.layers}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layer_ids = [int(x) for x in args.target_layer_ids.split(",")]
    dtype = resolve_dtype(args.dtype, args.device)
    target, tokenizer = load_target(args.target, dtype=dtype, device=args.device)
    target.requires_grad_(False)
    if max(layer_ids) >= target.config.num_hidden_layers:
        raise ValueError(f"--target-layer-ids {layer_ids} exceed the target's {target.config.num_hidden_layers} layers")

    deadline = time.time() + 60 * args.gen_minutes if args.gen_minutes is not None else None
    if args.evaluate:
        # Only the held-out split: score an existing drafter (e.g. the committed one) on it.
        drafter = load_drafter(None if args.evaluate == "default" else args.evaluate, target)
        eval_seqs = split_sequences("eval", target, tokenizer, args, drafter.target_layer_ids, deadline)
        eval_seqs = eval_seqs[:args.eval_limit]
        summary = {"drafter": args.evaluate, "dtype": str(dtype), **evaluate(drafter, eval_seqs)}
        name = Path(args.evaluate).name if args.evaluate != "default" else "default"
        (out / f"eval_{name}_{len(eval_seqs)}seqs.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    data = {split: split_sequences(split, target, tokenizer, args, layer_ids, deadline) for split in ("eval", "train")}
    if args.stop_after == "data":
        return {split: {"sequences": len(d), "generated_tokens": sum(len(s.tokens) - s.prompt_len for s in d)} for split, d in data.items()}

    torch.manual_seed(args.seed)
    config = drafter_config_for(target, tokenizer, args.layers, args.block_size, layer_ids)
    vocab = frequent_tokens(data["train"], args.draft_vocab, config.vocab_size) if args.draft_vocab else None
    if vocab is not None:
        config = dataclasses.replace(config, draft_vocab_size=len(vocab))
    drafter = DFlashDrafter(config, target.get_input_embeddings(), target.get_output_embeddings()).to(args.device)
    if vocab is not None:
        drafter.set_draft_vocab(vocab)
    opt = torch.optim.AdamW(drafter.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    step, losses = load_train_state(out, drafter, opt)
    weights = position_weights(args.block_size, args.decay)
    train = [s for s in data["train"] if len(s.tokens) > s.prompt_len + 1]
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step")
    drafter.train()
    while step < args.steps:
        # Seeded per step, so a resumed run draws exactly what the uninterrupted one would.
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad()
        picks = [train[i] for i in torch.randint(len(train), (args.seqs_per_step,), generator=gen).tolist()]
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = batch_loss(drafter, picks, [sample_anchors(s, args.anchors, gen) for s in picks], weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(round(loss.item(), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if step % args.save_every == 0 or step == args.steps:
            save_train_state(out, drafter, opt, step, losses)
    bar.close()

    final = out / "drafter"
    drafter.save_pretrained(final, dtype=torch.bfloat16)
    if args.export:
        drafter.save_pretrained(args.export, dtype=torch.bfloat16)
    if args.stop_after == "train":
        return {"steps": step}
    # Evaluate what ships: the bf16 file loaded back the way the engine loads it.
    shipped = load_drafter(final, target)
    summary = {"steps": step, "final_loss_mean_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
               "weights_bytes": (final / "model.safetensors").stat().st_size, "dtype": str(dtype),
               **evaluate(shipped, data["eval"])}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bastion train-drafter``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        summary = train_drafter(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"bastion train-drafter: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
