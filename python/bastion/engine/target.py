"""The target model behind the decoding loop: a Hugging Face causal LM over a batch of
requests of different lengths, with a ``RaggedKVCache`` holding exactly the committed tokens.

Three forwards: ``prefill`` (the prompts), ``step`` (one token per request: ``ar``, and the
plain steps of a speculative batch) and ``verify`` (the root and the tree nodes of every
request). A verify sees the tree through one
mask path: with ``attn_implementation="bastion_tree"`` (``bastion.hf_attention``, on CUDA)
the Triton tree attention reads the tree's packed ancestor bits; otherwise one additive mask
is written in place into a buffer allocated once.
"""

from __future__ import annotations

import inspect

import torch
from bastion_ext.tree import DraftTree

from ..hf_attention import ATTN_IMPLEMENTATION, tree_verify_context
from .kv_cache import RaggedKVCache
from .layer_features import LayerFeatures


def _cache_keyword(model) -> str:
    """The forward's cache argument: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


class TargetCache:
    """A causal LM plus the KV cache of ``batch`` requests.

    Parameters
    ----------
    model : transformers causal LM (Llama / Qwen families: logits are the lm_head of the
        final hidden state), eval mode.
    batch : requests decoded together.
    capacity : slots per request (prompt + generation + one verify).
    feature_layers : the decoder layers whose outputs forwards return, concatenated (a
        drafter's ``target_layer_ids``); empty: none.

    ``lengths`` (device) counts each request's committed tokens; ``bound`` (host) is at least
    their maximum, kept without reading the device: the engine tightens it with
    :meth:`set_bound` when it reads the committed tokens. ``live`` ((batch,) int64 on the
    device, all 1 at first) marks the slots that hold a request: a forward runs over every
    slot (fixed shapes), but only live slots' committed lengths grow.
    """

    def __init__(self, model, batch: int, capacity: int, feature_layers: tuple[int, ...] = ()):
        self.model = model
        self._features = LayerFeatures(model, feature_layers) if feature_layers else None
        self.cache = RaggedKVCache(model.config, batch, capacity, model.dtype, model.device)
        self.bound = 0
        self.live = torch.ones((batch,), dtype=torch.int64, device=model.device)
        self._cache_keyword = _cache_keyword(model)
        self._tree_attention = getattr(model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION
        self._verify_mask: torch.Tensor | None = None  # (batch, 1, N + 1, capacity), allocated once

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def lengths(self) -> torch.Tensor:
        return self.cache.lengths

    @property
    def batch_size(self) -> int:
        return self.cache.lengths.shape[0]

    def set_bound(self, longest: int) -> None:
        """The longest request's committed length, as the host knows it."""
        self.bound = longest

    def _additive_mask(self, sees_new: torch.Tensor, lengths: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(r, 1, q, active) mask of a forward of q new tokens for r requests with ``lengths``
        (r,) committed tokens: every token sees its request's committed slots, and new token j
        sees new token i iff ``sees_new[b, j, i]``. Written into ``out`` (a (r, 1, >= q,
        >= active) buffer) when given."""
        batch, q, _ = sees_new.shape
        active = self.cache.active
        rel = torch.arange(active, device=self.device) - lengths[:, None]  # slot - committed length
        new = sees_new.gather(2, rel.clamp(0, q - 1)[:, None, :].expand(batch, q, active))
        allowed = (rel < 0)[:, None, :] | (new & (rel < q)[:, None, :])
        dtype = self.model.dtype
        mask = torch.empty((batch, 1, q, active), dtype=dtype, device=self.device) if out is None else out[:, :, :q, :active]
        mask.zero_().masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        return mask

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None):
        """Run the decoder over (batch, q) tokens at (batch, q) positions after the committed
        slots (``cache.active`` set by the caller). Returns (final hidden states (batch, q, d),
        the features (batch, q, F) of ``feature_layers``, or None without them)."""
        if self._features is None:
            return self._run(tokens, positions, mask), None
        with self._features.catching():
            hidden = self._run(tokens, positions, mask)
        return hidden, self._features.features(hidden)

    def _run(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.model.base_model(input_ids=tokens, position_ids=positions, attention_mask=mask, use_cache=True,
                                    **{self._cache_keyword: self.cache})
        return out.last_hidden_state

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden).float()

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], rows: list[int] | None = None):
        """Run the prompts (one per request, non-empty, any lengths) through the model and cache
        them, in slots ``rows`` (host ints, one per prompt; None: every slot in order). The
        other slots are neither read nor written.

        Returns (logits (r, V) fp32 of each prompt's last token, features (r, max prompt
        length, F), right-padded, or None).
        """
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.int64, device=self.device)
        longest = max(len(p) for p in prompts)
        tokens = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], dtype=torch.int64, device=self.device)
        positions = torch.arange(longest, device=self.device).expand(len(prompts), longest)
        causal = torch.ones((longest, longest), dtype=torch.bool, device=self.device).tril()
        index = None if rows is None else torch.tensor(rows, dtype=torch.int64, device=self.device)
        if index is None:
            self.cache.lengths.zero_()
        else:
            self.cache.lengths.index_fill_(0, index, 0)
        self.cache.active, self.cache.rows = longest, index
        try:
            mask = self._additive_mask(causal.expand(len(prompts), -1, -1), torch.zeros_like(lens))
            hidden, features = self._forward(tokens, positions, mask)
        finally:
            self.cache.rows = None
        if index is None:
            self.cache.lengths.copy_(lens)
            self.bound = longest
        else:
            self.cache.lengths.index_copy_(0, index, lens)
            self.bound = max(self.bound, longest)
        last = hidden.gather(1, (lens - 1)[:, None, None].expand(-1, 1, hidden.shape[2]))[:, 0]
        return self._logits(last), features

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One plain decoding step: append ``tokens`` (batch,) int64; returns logits (batch, V) fp32."""
        return self.plain_step(tokens)[0]

    @torch.inference_mode()
    def plain_step(self, tokens: torch.Tensor):
        """:meth:`step` that also returns the features ((batch, 1, F), or None without
        ``feature_layers``): a speculative batch's plain step feeds them to its drafter.
        Returns (logits (batch, V) fp32, features)."""
        self.cache.active = self.bound + 1
        sees_self = torch.ones((self.batch_size, 1, 1), dtype=torch.bool, device=self.device)
        hidden, features = self._forward(tokens[:, None], self.lengths[:, None], self._additive_mask(sees_self, self.lengths))
        self.cache.lengths += self.live
        self.bound += 1
        return self._logits(hidden[:, -1]), features

    @torch.inference_mode()
    def verify(self, tree: DraftTree, roots: torch.Tensor, n: int):
        """One forward over every request's root and its first ``n`` tree nodes.

        tree: the round's trees (batch, N); roots: (batch,) int64, the last committed tokens;
        n: the verify width, at least every request's node count (the rest is padding, which
        no real token sees). Verify index 0 is the root, ``i + 1`` node ``i``. The new entries
        stay in the cache until :meth:`commit`.
        Returns (logits (batch, n + 1, V) fp32, features (batch, n + 1, F) or None).
        """
        lengths = self.lengths
        tokens = torch.cat([roots[:, None], tree.tokens[:, :n].clamp(min=0)], 1)
        node_positions = tree.positions[:, :n]
        positions = torch.cat([lengths[:, None], torch.where(node_positions >= 0, node_positions, lengths[:, None])], 1)
        self.cache.active = self.bound + n + 1
        if self._tree_attention:
            # The first n nodes' bits fill the first ceil(n / 32) words: ancestors come first.
            # An empty 4-D mask tells transformers' mask builder that the mask is prepared (so it
            # asks the cache nothing); the tree kernel never reads it.
            placeholder = torch.empty((self.batch_size, 1, 0, 0), dtype=self.model.dtype, device=self.device)
            with tree_verify_context(tree.ancestor_bits[:, :n, : (n + 31) // 32], cache_lens=lengths):
                hidden, features = self._forward(tokens, positions, placeholder)
        else:
            if self._verify_mask is None or self._verify_mask.shape[2] < n + 1:
                self._verify_mask = torch.empty((self.batch_size, 1, tree.max_nodes + 1, self.cache.capacity),
                                                dtype=self.model.dtype, device=self.device)
            hidden, features = self._forward(tokens, positions, self._additive_mask(tree.verify_visibility(n), lengths, self._verify_mask))
        return self._logits(hidden), features

    @torch.inference_mode()
    def commit(self, accepted_nodes: torch.Tensor, accept_len: torch.Tensor) -> None:
        """Keep the root and the accepted path of the last verify (device ops only)."""
        self.cache.compact(accepted_nodes, accept_len, self.live)

    def rewind(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens of every request (calibration)."""
        self.cache.lengths.fill_(length)
        self.bound = length
