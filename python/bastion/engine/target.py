"""The target model behind the decoding loop: a Hugging Face causal LM with a KV cache over
the committed sequence, one forward per round, and the commit that keeps only the accepted
path's cache entries."""

from __future__ import annotations

import torch
from transformers import DynamicCache


class TargetCache:
    """A causal LM plus a ``DynamicCache`` holding exactly the committed tokens (batch 1).

    Parameters
    ----------
    model : transformers causal LM (Llama / Qwen families), eval mode.
    want_hidden : whether forwards return the per-layer hidden states (a drafter needs them).
    """

    def __init__(self, model, want_hidden: bool):
        self.model = model
        self.want_hidden = want_hidden
        self.cache = DynamicCache(config=model.config)
        self.length = 0  # committed tokens in the cache

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor):
        """Run the prompt through the model and cache it.

        input_ids: (1, c) int64. Returns (logits (1, V) fp32 of the last position,
        hidden states: tuple of (1, c, d) per layer, or None).
        """
        out = self.model(input_ids=input_ids, cache=self.cache, use_cache=True,
                         output_hidden_states=self.want_hidden, logits_to_keep=1)
        self.length = input_ids.shape[1]
        return out.logits[:, -1].float(), out.hidden_states

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One plain decoding step: append ``token`` (1, 1) int64; returns logits (1, V) fp32."""
        position = torch.full((1, 1), self.length, dtype=torch.long, device=self.device)
        out = self.model(input_ids=token, position_ids=position, cache=self.cache, use_cache=True)
        self.length += 1
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def verify(self, tokens: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor):
        """One forward over the root and the tree nodes, with the ancestor-only tree mask.

        tokens: (1, m) int64, the root first; positions: (1, m) int64;
        tree_mask: (m, m) bool, ``tree_mask[i, j]`` iff verify token i may see verify token j.
        Every token sees the whole committed context. The m new entries stay in the cache
        until :meth:`commit`. Returns (logits (1, m, V) fp32, hidden states tuple or None).
        """
        m = tokens.shape[1]
        dtype = self.model.dtype
        visible = torch.ones((m, self.length + m), dtype=torch.bool, device=self.device)
        visible[:, self.length:] = tree_mask
        # An additive mask works with every attention backend (sdpa, eager); bool only with some.
        additive = torch.zeros(visible.shape, dtype=dtype, device=self.device)
        additive.masked_fill_(~visible, torch.finfo(dtype).min)
        out = self.model(input_ids=tokens, position_ids=positions, attention_mask=additive[None, None],
                         cache=self.cache, use_cache=True, output_hidden_states=self.want_hidden)
        return out.logits.float(), out.hidden_states

    @torch.inference_mode()
    def commit(self, keep: torch.Tensor) -> None:
        """Keep the verify entries ``keep`` and drop the rest of the last verify forward.

        keep: (L,) int64 indices into the last verify's tokens (0 = root), increasing.
        Their keys/values move to the slots right after the committed context, in order.
        """
        start = self.length
        slots = start + keep.to(self.device)
        for layer in self.cache.layers:
            # index_select copies first, so overlapping source/target slots are safe.
            layer.keys[:, :, start:start + len(keep)] = layer.keys.index_select(2, slots)
            layer.values[:, :, start:start + len(keep)] = layer.values.index_select(2, slots)
            layer.keys = layer.keys[:, :, :start + len(keep)]
            layer.values = layer.values[:, :, :start + len(keep)]
        self.length = start + len(keep)
