"""``bastion train-drafter``: distil a small DFlash drafter for a target from the target's own
greedy continuations of the documented prompt sets (``bastion/prompts``).

Steps, each resumable from ``--out``:
1. data: greedy continuations of the train and eval prompts (chat template), then one
   teacher-forced forward per sequence recording the selected layers' hidden states and the
   target's argmax at every position (the token greedy decoding emits there) -> ``data_*.safetensors``;
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
from bastion.models import chat_prompt_ids
from bastion.prompts import load_prompts

DEFAULT_LAYER_IDS = (1, 10, 19, 28)
MASK_TOKEN = "<empty_output>"  # a special token SmolLM2 never emits in chat; any fixed id works


@dataclass
class Sequence:
    """One training/eval sequence: prompt + greedy continuation.

    tokens: (S,) int64; features: (S, F) fp16 selected hidden states; targets: (S,) int64, the
    target's argmax after each prefix (targets[t] is greedy's token at t + 1); prompt_len: int.
    """

    tokens: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor
    prompt_len: int


# -- data ------------------------------------------------------------------------------------


@torch.no_grad()
def generate_sequences(model, tokenizer, prompts: list[str], layer_ids, max_new_tokens: int, batch_size: int, desc: str) -> list[Sequence]:
    """Greedy continuations (batched, left-padded) cut after the first EOS, then per sequence a
    teacher-forced forward for features and argmax targets."""
    from tqdm import tqdm

    device = model.get_input_embeddings().weight.device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out: list[Sequence] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        ids = [chat_prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad, eos_token_id=eos,
        )[:, width:].tolist()
        for prompt_ids, cont in zip(ids, generated):
            if eos in cont:
                cont = cont[:cont.index(eos) + 1]
            tokens = torch.tensor([prompt_ids + cont], device=device)
            result = model(input_ids=tokens, output_hidden_states=True)
            out.append(Sequence(
                tokens=tokens[0].cpu(),
                features=select_features(result.hidden_states, layer_ids)[0].to(torch.float16).cpu(),
                targets=result.logits[0].argmax(-1).cpu(),
                prompt_len=len(prompt_ids),
            ))
            bar.update(1)
    bar.close()
    return out


def save_sequences(path: Path, seqs: list[Sequence]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for i, s in enumerate(seqs):
        tensors[f"{i}.tokens"], tensors[f"{i}.features"], tensors[f"{i}.targets"] = s.tokens, s.features.contiguous(), s.targets
        tensors[f"{i}.prompt_len"] = torch.tensor([s.prompt_len])
    save_file(tensors, path)


def load_sequences(path: Path) -> list[Sequence]:
    from safetensors.torch import load_file

    t = load_file(path)
    count = len({k.split(".")[0] for k in t})
    return [Sequence(t[f"{i}.tokens"], t[f"{i}.features"], t[f"{i}.targets"], int(t[f"{i}.prompt_len"][0])) for i in range(count)]


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


def position_weights(block_size: int, decay: float) -> torch.Tensor:
    """(block_size - 1,) fp32 loss weights decay**k, mean 1: early positions decide acceptance."""
    w = decay ** torch.arange(block_size - 1, dtype=torch.float32)
    return w / w.mean()


def block_labels(seq: Sequence, anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """(M, block_size - 1) int64: targets[a + k] for k = 0.., -100 past the sequence's end."""
    idx = anchors[:, None] + torch.arange(block_size - 1)
    return torch.where(idx < len(seq.targets), seq.targets[idx.clamp(max=len(seq.targets) - 1)], -100)


def sequence_loss(drafter: DFlashDrafter, seq: Sequence, anchors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Position-weighted cross-entropy of the drafter's blocks rooted at ``anchors`` (M,)."""
    device = drafter.fc.weight.device
    positions = torch.arange(len(seq.tokens), device=device)[None]
    logits = drafter.anchor_logits(seq.features[None].to(device), positions, seq.tokens[None].to(device), anchors[None].to(device))[0]
    labels = block_labels(seq, anchors, drafter.block_size).to(device)
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none").view_as(labels)
    w = weights.to(device) * (labels != -100)
    return (ce * w).sum() / w.sum().clamp(min=1)


def sample_anchors(seq: Sequence, count: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``count`` distinct roots in the generated part (a root needs one later target)."""
    first, last = seq.prompt_len, len(seq.tokens) - 1
    span = last - first + 1
    picks = torch.randperm(span, generator=generator)[:count]
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
    tensors = {f"model.{n}": p.detach().clone() for n, p in drafter.named_parameters()}
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
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"model.{n}"])
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, slot, name = key.split(".", 2)
            opt.state[params[name]][slot] = value.to(params[name].device)
    return int(meta["step"]), list(meta["losses"])


# -- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(drafter: DFlashDrafter, seqs: list[Sequence], tree_budget: int = 16, tree_width: int = 8, chunk: int = 64) -> dict:
    """Held-out acceptance, walked against the target's greedy output.

    Rounds start at the first generated token and advance by the tokens each round commits
    (accepted + 1), as the engine's loop does; a round whose block would run past the sequence's
    end is not counted. ``dflash``: the drafter's argmax path; ``tree``: the best-first tree of
    ``tree_budget`` nodes over the top-``tree_width`` candidates per position
    (``bastion_ext.reference.expand_ref``). Also the unconditional top-1 match rate per position.
    """
    from bastion_ext.reference import expand_ref

    gamma, device = drafter.block_size, drafter.fc.weight.device
    path_rounds, tree_rounds = [], []
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
        labels = block_labels(seq, anchors, gamma)
        match = logits.argmax(-1) == labels
        hits += match.float().sum(0)
        counts += len(anchors)
        leading = match.int().cumprod(1).sum(1)
        logq, cand = logits.log_softmax(-1).topk(tree_width, dim=-1)
        for walk, rounds in (("path", path_rounds), ("tree", tree_rounds)):
            i = 0
            while i < len(anchors):
                if walk == "path":
                    accepted = int(leading[i])
                else:
                    tree = expand_ref(cand[i].tolist(), logq[i].tolist(), tree_budget)
                    accepted, node = 0, -1
                    while True:
                        want = int(labels[i, accepted]) if accepted < gamma - 1 else None
                        child = next((j for j in range(tree.n_nodes) if tree.parents[j] == node and tree.tokens[j] == want), None)
                        if child is None:
                            break
                        node, accepted = child, accepted + 1
                rounds.append(accepted + 1)
                i += accepted + 1
    return {
        "sequences": len(seqs),
        "dflash_mean_tokens_per_round": sum(path_rounds) / max(1, len(path_rounds)),
        "dflash_rounds": len(path_rounds),
        f"tree{tree_budget}_mean_tokens_per_round": sum(tree_rounds) / max(1, len(tree_rounds)),
        "tree_budget": tree_budget,
        "tree_width": tree_width,
        "top1_match_rate_by_position": [round(float(x), 4) for x in hits / counts.clamp(min=1)],
    }


# -- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion train-drafter", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work directory: data, resumable training state, final drafter")
    p.add_argument("--target", default=None, help="target model path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=2, help="drafter decoder layers")
    p.add_argument("--target-layer-ids", default=",".join(map(str, DEFAULT_LAYER_IDS)), help="comma-separated 0-based target layers")
    p.add_argument("--max-new-tokens", type=int, default=256, help="length of each greedy continuation")
    p.add_argument("--gen-batch", type=int, default=20)
    p.add_argument("--max-train-prompts", type=int, default=None)
    p.add_argument("--max-eval-prompts", type=int, default=None)
    p.add_argument("--anchors", type=int, default=24, help="roots per sequence per step")
    p.add_argument("--seqs-per-step", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--decay", type=float, default=0.8, help="loss weight decay per block position")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--export", default=None, help="also copy the final config.json + model.safetensors here")
    return p


def train_drafter(args: argparse.Namespace) -> dict:
    """Run data generation (if not done), training (resuming), export and evaluation; returns
    the evaluation summary (also written to ``<out>/eval.json``)."""
    from tqdm import tqdm

    from bastion.models import load_target

    if args.steps < 0 or args.block_size < 2 or args.layers < 1:
        raise ValueError(f"need --steps >= 0, --block-size >= 2, --layers >= 1; got {args.steps}, {args.block_size}, {args.layers}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layer_ids = [int(x) for x in args.target_layer_ids.split(",")]
    target, tokenizer = load_target(args.target, dtype=torch.float32, device=args.device)
    target.requires_grad_(False)
    if max(layer_ids) >= target.config.num_hidden_layers:
        raise ValueError(f"--target-layer-ids {layer_ids} exceed the target's {target.config.num_hidden_layers} layers")

    data = {}
    for split, limit in (("train", args.max_train_prompts), ("eval", args.max_eval_prompts)):
        path = out / f"data_{split}.safetensors"
        if not path.is_file():
            prompts = [r["prompt"] for r in load_prompts(split)][:limit]
            t0 = time.perf_counter()
            seqs = generate_sequences(target, tokenizer, prompts, layer_ids, args.max_new_tokens, args.gen_batch, f"data {split}")
            save_sequences(path, seqs)
            print(f"{split}: {len(seqs)} sequences, {sum(len(s.tokens) - s.prompt_len for s in seqs)} generated tokens "
                  f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        data[split] = load_sequences(path)

    torch.manual_seed(args.seed)
    config = drafter_config_for(target, tokenizer, args.layers, args.block_size, layer_ids)
    drafter = DFlashDrafter(config, target.get_input_embeddings(), target.get_output_embeddings()).to(args.device)
    opt = torch.optim.AdamW(drafter.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    step, losses = load_train_state(out, drafter, opt)
    weights = position_weights(args.block_size, args.decay)
    train = data["train"]
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step")
    drafter.train()
    while step < args.steps:
        # Seeded per step, so a resumed run draws exactly what the uninterrupted one would.
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad()
        total = 0.0
        for idx in torch.randint(len(train), (args.seqs_per_step,), generator=gen).tolist():
            seq = train[idx]
            loss = sequence_loss(drafter, seq, sample_anchors(seq, args.anchors, gen), weights) / args.seqs_per_step
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(round(total, 4))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if step % args.save_every == 0 or step == args.steps:
            save_train_state(out, drafter, opt, step, losses)
    bar.close()

    final = out / "drafter"
    drafter.save_pretrained(final, dtype=torch.bfloat16)
    if args.export:
        drafter.save_pretrained(args.export, dtype=torch.bfloat16)
    # Evaluate what ships: the bf16 file loaded back the way the engine loads it.
    shipped = load_drafter(final, target)
    summary = {"steps": step, "final_loss_mean_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
               "weights_bytes": (final / "model.safetensors").stat().st_size, **evaluate(shipped, data["eval"])}
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
