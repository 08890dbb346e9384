"""The drafter's training data: the target's own greedy continuations, as token ids.

Only tokens are kept (and committed, gzip-compressed safetensors: a few MB per million
tokens); the target's hidden states are recomputed from them when training starts.

- :func:`generate_token_data` answers every prompt row (batched greedy decoding,
  :func:`greedy_continuations`), cut after the first EOS, chunk by chunk into a directory of
  small committed files, so an interrupted run resumes at the next unfinished chunk. Multi-turn rows (a ``follow_up`` key)
  run last: their first assistant turn is the target's own answer to ``prompt`` from an
  earlier chunk.
- :class:`TokenData` holds the result: ``tokens`` (T,) int32 concatenated, ``offsets`` (n+1,)
  int64 and ``prompt_lens`` (n,) int32; :func:`save_token_data` / :func:`load_token_data`
  write and read it without pickle.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class TokenData:
    """n sequences of prompt + greedy continuation.

    tokens: (T,) int32, all sequences concatenated; offsets: (n + 1,) int64, sequence i is
    ``tokens[offsets[i]:offsets[i + 1]]``; prompt_lens: (n,) int32; ids: the prompt rows' ids.
    """

    tokens: torch.Tensor
    offsets: torch.Tensor
    prompt_lens: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def sequence(self, i: int) -> torch.Tensor:
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    @property
    def generated_tokens(self) -> int:
        return int((self.offsets[1:] - self.offsets[:-1]).sum() - self.prompt_lens.sum())

    @classmethod
    def from_lists(cls, sequences: list[list[int]], prompt_lens: list[int], ids: list[str]) -> "TokenData":
        if not (len(sequences) == len(prompt_lens) == len(ids)):
            raise ValueError(f"{len(sequences)} sequences, {len(prompt_lens)} prompt_lens and {len(ids)} ids")
        lengths = torch.tensor([0] + [len(s) for s in sequences], dtype=torch.int64)
        flat = [t for s in sequences for t in s]
        return cls(torch.tensor(flat, dtype=torch.int32), lengths.cumsum(0), torch.tensor(prompt_lens, dtype=torch.int32), list(ids))


def save_token_data(path: str | os.PathLike, data: TokenData) -> None:
    """safetensors bytes (gzip-compressed when ``path`` ends in .gz), written atomically."""
    from safetensors.torch import save

    blob = save({"tokens": data.tokens, "offsets": data.offsets, "prompt_lens": data.prompt_lens},
                metadata={"ids": json.dumps(data.ids)})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(blob, 9) if path.suffix == ".gz" else blob)
    os.replace(tmp, path)


def load_token_data(path: str | os.PathLike) -> TokenData:
    """Read :func:`save_token_data`'s file; ValueError naming the file if it is corrupt."""
    from safetensors.torch import load

    path = Path(path)
    blob = path.read_bytes()
    try:
        if path.suffix == ".gz":
            blob = gzip.decompress(blob)
        tensors = load(blob)
        header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
        ids = json.loads(header.get("__metadata__", {}).get("ids", "[]"))
    except Exception as err:  # noqa: BLE001  gzip, safetensors and json each raise their own types
        raise ValueError(f"token data {str(path)!r} is corrupt or not a token-data file: {type(err).__name__}: {err}") from None
    need = {"tokens", "offsets", "prompt_lens"}
    if not need <= tensors.keys():
        raise ValueError(f"token data {str(path)!r} lacks {sorted(need - tensors.keys())}")
    data = TokenData(tensors["tokens"], tensors["offsets"], tensors["prompt_lens"], ids)
    n = len(data.prompt_lens)
    if data.offsets.shape != (n + 1,) or int(data.offsets[-1]) != len(data.tokens) or len(ids) != n:
        raise ValueError(f"token data {str(path)!r} is inconsistent: {n} sequences, offsets {tuple(data.offsets.shape)}, "
                         f"{len(data.tokens)} tokens, {len(ids)} ids")
    return data


def _messages(row: dict, answers: dict[str, str]) -> list[dict]:
    """The chat of one prompt row: one user turn, or for a multi-turn row the user turn, the
    target's own answer to it and the follow-up."""
    if "follow_up" not in row:
        return [{"role": "user", "content": row["prompt"]}]
    if row["prompt"] not in answers:
        raise ValueError(f"multi-turn row {row['id']!r}: no single-turn answer to its prompt was generated first")
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answers[row["prompt"]]},
            {"role": "user", "content": row["follow_up"]}]


@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], max_new_tokens: int, eos: int, pad: int) -> list[list[int]]:
    """Greedy continuations of several prompts at once (left-padded), each cut after its EOS.

    A finished row leaves the batch (its KV rows are dropped), so a step costs only the rows
    still running: no compute is spent on padding after a short answer.
    """
    from transformers import DynamicCache

    device = model.get_input_embeddings().weight.device
    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    conts: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    next_position = attention.sum(-1)
    while True:
        tokens = logits.argmax(-1)
        keep = []
        for j, (b, t) in enumerate(zip(active, tokens.tolist())):
            conts[b].append(t)
            if t != eos and len(conts[b]) < max_new_tokens:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            attention, tokens, next_position = attention[index], tokens[index], next_position[index]
            active = [active[j] for j in keep]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
        logits = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=next_position[:, None],
                       cache=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    return conts


@torch.no_grad()
def generate_token_data(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int, chunk_dir: Path,
                        desc: str = "data", deadline: float | None = None) -> list[TokenData]:
    """Greedy continuations of ``rows`` (see the module docstring), resumable from ``chunk_dir``.

    Rows run in chunks of ``batch_size``, single-turn rows first; every finished chunk is saved
    as ``chunk_dir/chunk_XXXXX.safetensors.gz`` (small: meant to be committed, so that a later
    run, on any machine, resumes). No new chunk starts after
    ``deadline`` (a ``time.time()``). Returns the finished chunks, in order (chunk i is
    ``result[i]``).
    """
    from tqdm import tqdm

    chunk_dir.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ordered = [r for r in rows if "follow_up" not in r] + [r for r in rows if "follow_up" in r]
    chunks = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    parts: list[TokenData] = []
    answers: dict[str, str] = {}
    bar = tqdm(total=len(ordered), desc=desc, unit="prompt")
    t0, fresh_tokens = time.perf_counter(), 0
    for index, chunk in enumerate(chunks):
        path = chunk_dir / f"chunk_{index:05d}.safetensors.gz"
        if not path.is_file() and deadline is not None and time.time() > deadline:
            break
        if path.is_file():
            part = load_token_data(path)
            if sorted(part.ids) != sorted(r["id"] for r in chunk):
                raise ValueError(f"{path} holds other prompts than chunk {index} of these rows (another --gen-batch?)")
        else:
            texts = [tokenizer.apply_chat_template(_messages(r, answers), tokenize=False, add_generation_prompt=True) for r in chunk]
            ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
            conts = greedy_continuations(model, ids, max_new_tokens, eos, pad)
            seqs = [p + c for p, c in zip(ids, conts)]
            fresh_tokens += sum(map(len, conts))
            plens, names = [len(p) for p in ids], [r["id"] for r in chunk]
            part = TokenData.from_lists(seqs, plens, names)
            save_token_data(path, part)
        for i, name in enumerate(part.ids):
            row = next(r for r in chunk if r["id"] == name)
            if "follow_up" not in row:
                gen = part.sequence(i)[int(part.prompt_lens[i]):].tolist()
                answers[row["prompt"]] = tokenizer.decode(gen, skip_special_tokens=True)
        parts.append(part)
        bar.update(len(chunk))
        elapsed = time.perf_counter() - t0
        bar.set_postfix(tokens=sum(p.generated_tokens for p in parts), tok_s=f"{fresh_tokens / max(elapsed, 1e-9):.0f}")
    bar.close()
    return parts
