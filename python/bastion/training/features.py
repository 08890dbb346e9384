"""Teacher-forced target forwards over the token chunks: what the drafter trains on.

For every token of every sequence one forward gives the drafter's input features (the outputs
of the target layers it reads), the target's argmax after that prefix (the hard label) and its
top-k logits (the soft label). Computed once per chunk and cached as safetensors in the work
directory (never committed: about 4.7 kB a token), so a resumed run reads them back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bastion.drafter import select_features

from .tokens import TokenData

CACHE_KEYS = ("features", "argmax", "topk_ids", "topk_logits")


@dataclass
class Sequence:
    """One sequence: prompt + the target's greedy continuation, with its teacher signals.

    tokens: (S,) int64; features: (S, F) the target's selected layer outputs (its dtype);
    targets: (S,) int64, the target's argmax after each prefix (``targets[t]`` predicts token
    t + 1); prompt_len: int; topk_ids: (S, k) int64 target ids and topk_logits: (S, k) fp32,
    the target's k largest logits after each prefix (None without soft labels).
    """

    tokens: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor
    prompt_len: int
    topk_ids: torch.Tensor | None = None
    topk_logits: torch.Tensor | None = None

    @property
    def roots(self) -> int:
        """Training roots: every generated position that has a next target."""
        return max(0, len(self.tokens) - 1 - self.prompt_len)


@torch.no_grad()
def featurize(target, data: TokenData, layer_ids, topk: int, batch_tokens: int = 4096, bar=None) -> dict[str, torch.Tensor]:
    """Teacher-forced forwards over every sequence of ``data`` (right-padded batches of about
    ``batch_tokens`` tokens, similar lengths together).

    Returns rows aligned with ``data.tokens`` (T rows): features (T, F) in the target's dtype,
    argmax (T,) int32, topk_ids (T, topk) int32, topk_logits (T, topk) bf16.
    """
    device = target.get_input_embeddings().weight.device
    lengths = (data.offsets[1:] - data.offsets[:-1]).tolist()
    order = sorted(range(len(data)), key=lambda i: lengths[i])
    total = len(data.tokens)
    out: dict[str, torch.Tensor] = {}
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
        values, indices = result.logits.topk(topk, dim=-1)
        if not out:
            out = {"features": feats.new_empty((total, feats.shape[-1]), device="cpu"),
                   "argmax": torch.empty(total, dtype=torch.int32), "topk_ids": torch.empty((total, topk), dtype=torch.int32),
                   "topk_logits": torch.empty((total, topk), dtype=torch.bfloat16)}
        for row, j in enumerate(group):
            start, n = int(data.offsets[j]), lengths[j]
            out["features"][start:start + n] = feats[row, :n].cpu()
            out["argmax"][start:start + n] = indices[row, :n, 0].cpu().int()
            out["topk_ids"][start:start + n] = indices[row, :n].cpu().int()
            out["topk_logits"][start:start + n] = values[row, :n].cpu().bfloat16()
        if bar is not None:
            bar.update(sum(lengths[j] for j in group))
        i += len(group)
    return out


def cached_features(target, data: TokenData, layer_ids, topk: int, path: Path, bar=None) -> dict[str, torch.Tensor]:
    """``featurize`` of one chunk, read from ``path`` when a complete earlier run left it there
    (written atomically; a file of another shape or a corrupt one is recomputed)."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        try:
            cached = load_file(path)
        except Exception:  # noqa: BLE001  safetensors raises several types for a damaged file
            cached = {}
        fits = set(CACHE_KEYS) <= cached.keys() and len(cached["argmax"]) == len(data.tokens) and cached["topk_ids"].shape[1] >= topk
        if fits:
            if bar is not None:
                bar.update(len(data.tokens))
            return cached
    computed = featurize(target, data, layer_ids, topk, bar=bar)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in computed.items()}, tmp)
    os.replace(tmp, path)
    return computed


def split_sequences(target, parts: list[TokenData], layer_ids, topk: int, cache_dir: Path, desc: str) -> list[Sequence]:
    """Every sequence of ``parts`` (one split's chunks, in order) with its teacher signals,
    featurizing the chunks not yet in ``cache_dir``."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(p.tokens) for p in parts), desc=desc, unit="tok", unit_scale=True)
    seqs: list[Sequence] = []
    for index, part in enumerate(parts):
        cached = cached_features(target, part, layer_ids, topk, cache_dir / f"chunk_{index:05d}.safetensors", bar)
        for i in range(len(part)):
            a, b = int(part.offsets[i]), int(part.offsets[i + 1])
            seqs.append(Sequence(part.sequence(i).long(), cached["features"][a:b], cached["argmax"][a:b].long(), int(part.prompt_lens[i]),
                                 cached["topk_ids"][a:b, :topk].long(), cached["topk_logits"][a:b, :topk].float()))
    bar.close()
    return seqs


def channel_scale(seqs: list[Sequence], max_rows: int = 200_000) -> torch.Tensor:
    """(F,) fp32: 1 / RMS of each feature channel over the generated tokens (the first
    ``max_rows`` of them). A few target channels sit at hundreds on every token; unscaled, they
    would decide most of ``fc``'s output."""
    total, rows = None, 0
    for s in seqs:
        x = s.features[s.prompt_len:].float()
        total = x.pow(2).sum(0) if total is None else total + x.pow(2).sum(0)
        rows += len(x)
        if rows >= max_rows:
            break
    if total is None or rows == 0:
        raise ValueError("no generated tokens to measure the feature scale on")
    return (total / rows).clamp(min=1e-12).rsqrt()
