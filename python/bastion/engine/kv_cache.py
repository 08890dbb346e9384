"""The target's KV cache for a batch of requests of different lengths: one static buffer,
written in place, compacted to the accepted path by ``bastion_ext.ops.compact_kv``.

Request ``b`` holds its committed tokens at slots ``0 .. lengths[b] - 1``; a forward writes
its new tokens right after them (slot ``lengths[b] + j`` for input column ``j``), whatever the
other requests' lengths. Attention sees slots ``0 .. active - 1`` with ``active`` the longest
request's extent this forward; the mask hides every other request's slots past its own end.
Nothing is concatenated or sliced per round, so a round's cost does not grow with the context
beyond attention itself, and the storage never moves while a batch runs: a request leaving or
joining changes ``lengths`` and the caller's live mask, never ``kv``.

A forward may address a subset of the requests (``rows``: a request joining a running batch
has its prompt prefilled alone): it writes into those rows only and attends over a gathered
copy of them; ``rows`` None (every round) reads the buffer in place.

Transformers' attention layers call ``update(key_states, value_states, layer_idx, ...)`` on the
object passed as the forward's cache; that is the whole interface this class implements.
"""

from __future__ import annotations

import torch
from bastion_ext import ops


class RaggedKVCache:
    """Static per-layer keys and values for ``batch`` requests of up to ``capacity`` tokens.

    Parameters
    ----------
    config : the model's config (``num_hidden_layers``, ``num_key_value_heads``, ``head_dim``
        or ``hidden_size / num_attention_heads``).
    batch, capacity : requests and slots per request.
    dtype, device : those of the model.

    Attributes
    ----------
    kv : (2 * layers, batch, kv_heads, capacity, head_dim): layer ``l``'s keys at ``2 l``,
        values at ``2 l + 1`` (the layout ``compact_kv`` takes).
    lengths : (batch,) int64 on the device: committed tokens per request.
    active : the slots attention reads this forward (set by the caller, a host int).
    rows : (r,) int64 on the device, the requests this forward addresses in its batch order,
        or None for all of them (set by the caller).
    """

    def __init__(self, config, batch: int, capacity: int, dtype: torch.dtype, device):
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv = torch.zeros((2 * config.num_hidden_layers, batch, heads, capacity, head_dim), dtype=dtype, device=device)
        self.lengths = torch.zeros((batch,), dtype=torch.int64, device=device)
        self.active = 0
        self.rows: torch.Tensor | None = None
        self._write_rows: torch.Tensor | None = None  # this forward's flattened write rows (made at layer 0)

    @property
    def capacity(self) -> int:
        return self.kv.shape[3]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write a forward's new keys/values (r, kv_heads, q, head_dim) after each addressed
        request's committed tokens; return the layer's (r, kv_heads, active, head_dim) keys and
        values (views of the buffer when every request is addressed)."""
        batch, heads, q, head_dim = key_states.shape
        keys, values = self.kv[2 * layer_idx], self.kv[2 * layer_idx + 1]
        if self.rows is None:
            # Rows of the flattened (batch * heads * capacity, head_dim) buffer: an index_copy_
            # costs the rows written, where scatter_ along the slots copied the whole buffer
            # (on the CPU: a plain step over 512 slots paid 0.8 ms more than over 260). Every
            # layer writes the same rows: the index is made once per forward, at layer 0.
            if layer_idx == 0:
                slots = self.lengths[:, None] + torch.arange(q, device=self.lengths.device)
                heads_rows = torch.arange(batch * heads, device=slots.device).view(batch, heads, 1) * self.capacity
                self._write_rows = (heads_rows + slots[:, None, :]).reshape(-1)
            index = self._write_rows
            keys.view(-1, head_dim).index_copy_(0, index, key_states.to(keys.dtype).reshape(-1, head_dim))
            values.view(-1, head_dim).index_copy_(0, index, value_states.to(values.dtype).reshape(-1, head_dim))
            return keys[:, :, : self.active], values[:, :, : self.active]
        slots = self.lengths.index_select(0, self.rows)[:, None] + torch.arange(q, device=self.lengths.device)
        where = (self.rows[:, None, None], torch.arange(heads, device=slots.device)[None, :, None], slots[:, None, :])
        keys.index_put_(where, key_states.to(keys.dtype))
        values.index_put_(where, value_states.to(values.dtype))
        return keys.index_select(0, self.rows)[:, :, : self.active], values.index_select(0, self.rows)[:, :, : self.active]

    def compact(self, accepted_nodes: torch.Tensor, accept_len: torch.Tensor, live: torch.Tensor) -> None:
        """Keep the root and the accepted path of the last verify forward (a ``VerifyResult``'s
        (batch, P) int32 path and (batch,) int32 length); the committed lengths of the live
        requests ((batch,) int64, 1 or 0) grow by ``1 + accept_len``. Device ops only."""
        ops.compact_kv(self.kv, self.lengths, accepted_nodes, accept_len)
        self.lengths += (1 + accept_len.to(torch.int64)) * live
