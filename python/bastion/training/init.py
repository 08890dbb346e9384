"""A new drafter for a target, started well-conditioned: the target's sizes, its final norm,
optionally its own decoder layers, and a reduced draft vocabulary."""

from __future__ import annotations

import torch

from bastion.drafter import DFlashConfig, DFlashDrafter

from .features import Sequence

MASK_TOKEN = "<empty_output>"  # a special token SmolLM2 never emits in chat; any fixed id works


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


def frequent_tokens(seqs: list[Sequence], count: int, vocab_size: int) -> torch.Tensor:
    """(count,) int64, increasing: the reduced draft vocabulary. Every token of ``seqs``
    (prompts and continuations) by frequency, then the lowest unseen ids: a BPE vocabulary
    numbers its merges roughly by frequency, and the drafter can still score a token it never
    saw as a label through the target's own lm_head row."""
    if not 1 <= count <= vocab_size:
        raise ValueError(f"draft_vocab (--draft-vocab) must be in [1, {vocab_size}], got {count}")
    counts = torch.bincount(torch.cat([s.tokens for s in seqs]).long(), minlength=vocab_size)[:vocab_size]
    order = sorted(range(vocab_size), key=lambda t: (-int(counts[t]), t))[:count]
    return torch.tensor(sorted(order), dtype=torch.long)


def warm_layer_ids(num_target_layers: int, num_layers: int, how: str) -> list[int]:
    """Which target layers start the drafter's: ``last`` the last ``num_layers``, ``spread``
    evenly spaced from the middle to the last."""
    if how == "last":
        return list(range(num_target_layers - num_layers, num_target_layers))
    first = num_target_layers // 2
    return [round(first + i * (num_target_layers - 1 - first) / max(1, num_layers - 1)) for i in range(num_layers)]


def copy_target_layers(drafter: DFlashDrafter, target, layer_ids: list[int]) -> None:
    """Start each drafter layer from a target decoder layer of the same shapes (attention
    projections, MLP, both norms); the drafter's per-head q/k norms start at one."""
    layers = target.model.layers
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
             "mlp.down_proj", "input_layernorm", "post_attention_layernorm"]
    with torch.no_grad():
        for mine, source in zip(drafter.layers, (layers[i] for i in layer_ids)):
            for name in names:
                mine.get_submodule(name).weight.copy_(source.get_submodule(name).weight.float())


def new_drafter(target, tokenizer, num_layers: int, block_size: int, layer_ids, vocab: torch.Tensor | None,
                warm_start: str = "none") -> DFlashDrafter:
    """A fresh fp32 drafter for ``target`` on its device: the target's final norm as its own
    (the shared lm_head was trained behind it), a reduced vocabulary ``vocab`` ((V',) target
    ids, increasing) if given, and with ``warm_start`` != "none" target layers copied in."""
    import dataclasses

    config = drafter_config_for(target, tokenizer, num_layers, block_size, layer_ids)
    if vocab is not None:
        config = dataclasses.replace(config, draft_vocab_size=len(vocab))
    device = target.get_input_embeddings().weight.device
    drafter = DFlashDrafter(config, target.get_input_embeddings(), target.get_output_embeddings()).to(device)
    if vocab is not None:
        drafter.set_draft_vocab(vocab)
    with torch.no_grad():
        # Not scaled down, although a mask position's residual starts as the mask's embedding,
        # which the tied lm_head behind this norm scores up to ~180: the norm's gains set the
        # logit scale, and AdamW moves them by about lr a step, so gains started at a twentieth
        # cap the drafter's confidence for a thousand steps; the layers' outputs, which turn the
        # residual away from the embedding, grow geometrically instead.
        drafter.norm.weight.copy_(target.model.norm.weight.float())
    if warm_start != "none":
        copy_target_layers(drafter, target, warm_layer_ids(config.num_target_layers, num_layers, warm_start))
    return drafter
