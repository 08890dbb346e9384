"""The training run: token data -> teacher features -> optimizer steps (resumable) -> the
exported drafter -> its held-out evaluation."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from bastion.drafter import DFlashDrafter, load_drafter

from .config import TrainConfig
from .evaluate import evaluate
from .features import Sequence, channel_scale, split_sequences
from .init import frequent_tokens, new_drafter
from .loss import label_weight, position_weights, sequence_loss
from .tokens import generate_token_data


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` to 10% of it."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_order(n: int, steps: int, per_step: int, seed: int) -> list[int]:
    """Sequence indices for every step: one seeded permutation per epoch, concatenated, so a
    resumed run draws exactly what the uninterrupted one would."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * per_step:
        order += torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        epoch += 1
    return order


def save_train_state(out: Path, drafter: DFlashDrafter, opt: torch.optim.Optimizer, step: int, losses: list[float], meta: dict) -> None:
    """Model and AdamW moments as safetensors (no pickle), step, losses and settings as JSON;
    each file written to a temporary name and renamed, the JSON last."""
    from safetensors.torch import save_file

    names = {p: n for n, p in drafter.named_parameters()}
    tensors = {f"model.{n}": t.detach().clone() for n, t in drafter.state_dict().items()}
    for p, st in opt.state.items():
        for key, value in st.items():
            tensors[f"adam.{key}.{names[p]}"] = value.detach().clone().reshape(value.shape)
    tmp = out / "train_state.safetensors.tmp"
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, out / "train_state.safetensors")
    tmp = out / "train_state.json.tmp"
    tmp.write_text(json.dumps({"step": step, "losses": losses, **meta}))
    os.replace(tmp, out / "train_state.json")


def load_train_state(out: Path, drafter: DFlashDrafter, opt: torch.optim.Optimizer, meta: dict | None = None) -> tuple[int, list[float]]:
    """Restore ``save_train_state``'s files (step 0 when there are none). ``meta``: the
    settings the saved run must have used; a mismatch is an error naming the setting."""
    from safetensors.torch import load_file

    if not (out / "train_state.json").is_file():
        return 0, []
    saved = json.loads((out / "train_state.json").read_text())
    for key, value in (meta or {}).items():
        if key in saved and saved[key] != value:
            raise ValueError(f"{out} holds a run with {key}={saved[key]!r}, this one has {value!r}: use another --out")
    tensors = load_file(out / "train_state.safetensors")
    params = dict(drafter.named_parameters())
    drafter.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, slot, name = key.split(".", 2)
            opt.state[params[name]][slot] = value.to(params[name].device)
    return int(saved["step"]), list(saved["losses"])


def train_steps(cfg: TrainConfig, drafter: DFlashDrafter, train: list[Sequence], scale: torch.Tensor, autocast: bool) -> dict:
    """AdamW over ``train`` (every root of ``seqs_per_step`` sequences per step), resuming from
    ``cfg.out``; a progress bar shows the loss, roots/s and the ETA."""
    from tqdm import tqdm

    steps = math.ceil(cfg.epochs * len(train) / cfg.seqs_per_step)
    warmup = max(1, round(cfg.warmup * steps))
    opt = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    meta = cfg.model_key()
    step, losses = load_train_state(cfg.out, drafter, opt, meta)
    order = step_order(len(train), steps, cfg.seqs_per_step, cfg.seed)
    weights = position_weights(cfg.block_size, cfg.decay)
    device = drafter.fc.weight.device
    bar = tqdm(total=steps, initial=step, desc="train", unit="step")
    roots_done, t0, top1 = 0, time.perf_counter(), 0.0
    drafter.train()
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr, warmup)
        opt.zero_grad(set_to_none=True)
        picks = [train[i] for i in order[step * cfg.seqs_per_step:(step + 1) * cfg.seqs_per_step]]
        total_weight = sum(label_weight(drafter, s, weights) for s in picks)
        step_loss, stats = 0.0, torch.zeros(2, cfg.block_size - 1)
        for seq in picks:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss_sum, seq_stats = sequence_loss(drafter, seq, weights, cfg.soft, scale)
            (loss_sum / max(total_weight, 1e-9)).backward()
            step_loss, stats = step_loss + float(loss_sum.detach()), stats + seq_stats
            roots_done += seq.roots
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(round(step_loss / max(total_weight, 1e-9), 4))
        top1 = 0.9 * top1 + 0.1 * float(stats[0, 0] / stats[1, 0].clamp(min=1)) if step > 1 else float(stats[0, 0] / stats[1, 0].clamp(min=1))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", top1=f"{top1:.3f}",
                        roots_s=f"{roots_done / (time.perf_counter() - t0):.0f}")
        if step % cfg.save_every == 0 or step == steps:
            save_train_state(cfg.out, drafter, opt, step, losses, meta)
    bar.close()
    return {"steps": steps, "final_loss_mean_last_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "roots_per_s_this_run": round(roots_done / max(time.perf_counter() - t0, 1e-9), 1)}


def split_data(cfg: TrainConfig, target, tokenizer, split: str, layer_ids, deadline: float | None) -> list[Sequence]:
    """One split's sequences: token chunks from ``cfg.data_dir`` (the missing ones generated
    until ``deadline``), their teacher features from the cache in ``cfg.out``."""
    from bastion.prompts import load_prompts

    limit = cfg.max_train_prompts if split == "train" else cfg.max_eval_prompts
    parts = generate_token_data(target, tokenizer, load_prompts(split), cfg.max_new_tokens, cfg.gen_batch,
                                cfg.data_dir / f"{split}_tokens", desc=f"data {split}", deadline=deadline)
    if limit is not None:  # the first chunks, in the order they were generated (multi-turn rows last)
        parts = parts[:math.ceil(limit / cfg.gen_batch)]
    cache = cfg.out / f"features_{target.dtype}_L{'-'.join(map(str, layer_ids))}".replace("torch.", "") / split
    return split_sequences(target, parts, layer_ids, cfg.soft_topk, cache, desc=f"features {split}")[:limit]


def export(drafter: DFlashDrafter, scale: torch.Tensor, path: Path) -> None:
    """Write the published layout with the feature scale folded into ``fc`` (bf16)."""
    shipped = DFlashDrafter(drafter.config, drafter.target.embed_tokens, drafter.target.lm_head)
    shipped.load_state_dict(drafter.state_dict())
    shipped.fold_feature_scale(scale)
    shipped.save_pretrained(path, dtype=torch.bfloat16)


def run(cfg: TrainConfig, stop_after: str | None = None, evaluate_only: str | None = None, export_to: Path | None = None) -> dict:
    """The whole recipe (see ``bastion.training``); returns the evaluation summary, also
    written to ``cfg.out/eval*.json``. ``evaluate_only``: score that drafter directory
    ('default': the committed one) on the held-out split and stop."""
    from bastion.dtypes import resolve_dtype
    from bastion.models import load_target

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    target, tokenizer = load_target(cfg.target, dtype=dtype, device=cfg.device)
    target.requires_grad_(False)
    if max(cfg.target_layer_ids) >= target.config.num_hidden_layers:
        raise ValueError(f"target_layer_ids {list(cfg.target_layer_ids)} exceed the target's {target.config.num_hidden_layers} layers")
    deadline = time.time() + 60 * cfg.gen_minutes if cfg.gen_minutes is not None else None
    if evaluate_only:
        drafter = load_drafter(None if evaluate_only == "default" else evaluate_only, target)
        held_out = split_data(cfg, target, tokenizer, "eval", drafter.target_layer_ids, deadline)[:cfg.eval_limit]
        summary = {"drafter": evaluate_only, "dtype": str(dtype), **evaluate(drafter, held_out, cfg.tree_budgets, cfg.tree_width)}
        name = "default" if evaluate_only == "default" else Path(evaluate_only).name
        (cfg.out / f"eval_{name}_{len(held_out)}seqs.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    data = {split: split_data(cfg, target, tokenizer, split, cfg.target_layer_ids, deadline) for split in ("eval", "train")}
    if stop_after == "data":
        return {split: {"sequences": len(d), "generated_tokens": sum(len(s.tokens) - s.prompt_len for s in d)} for split, d in data.items()}

    torch.manual_seed(cfg.seed)
    train = [s for s in data["train"] if s.roots > 0]
    vocab = frequent_tokens(train, cfg.draft_vocab, target.config.vocab_size) if cfg.draft_vocab else None
    drafter = new_drafter(target, tokenizer, cfg.layers, cfg.block_size, cfg.target_layer_ids, vocab, cfg.warm_start)
    scale = channel_scale(train)
    t0 = time.perf_counter()
    trained = train_steps(cfg, drafter, train, scale, autocast=dtype == torch.bfloat16)
    final = cfg.out / "drafter"
    export(drafter, scale, final)
    if export_to is not None:
        export(drafter, scale, Path(export_to))
    if stop_after == "train":
        return trained
    shipped = load_drafter(final, target)  # what ships: the bf16 file, loaded the way the engine loads it
    held_out = data["eval"][:cfg.eval_limit]
    summary = {**trained, "train_minutes_this_run": round((time.perf_counter() - t0) / 60, 1),
               "weights_bytes": (final / "model.safetensors").stat().st_size, "dtype": str(dtype),
               "config": cfg.model_key(), **evaluate(shipped, held_out, cfg.tree_budgets, cfg.tree_width)}
    (cfg.out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
