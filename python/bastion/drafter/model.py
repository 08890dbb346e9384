"""The DFlash block-diffusion drafter: one forward over [root, mask, ..., mask] conditioned on
projected target hidden states yields the distributions of the next ``block_size - 1`` tokens.

How it sees the target (as in the published DFlash drafters):
- the features of each committed token are the concatenated outputs of the target layers in
  ``target_layer_ids``; ``fc`` + ``hidden_norm`` project them to the hidden size, and every
  drafter layer turns them into context keys/values (cached: they never change);
- the block is embedded with the target's own input embeddings; its queries attend to the whole
  context and to the whole block (no causal mask inside the block);
- the last ``block_size - 1`` block positions, after ``norm``, go through the target's lm_head.
The target's embeddings and lm_head are shared, never stored in the drafter's file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import read_checkpoint, write_checkpoint
from .config import DFlashConfig
from .layers import BlockContext, DFlashLayer, RMSNorm, RotaryEmbedding


def select_features(hidden_states, target_layer_ids) -> torch.Tensor:
    """The drafter's input features from a Hugging Face ``hidden_states`` tuple.

    hidden_states: tuple of (batch, n, hidden) tensors, entry 0 the embeddings, entry ``i + 1``
    the output of decoder layer ``i``. target_layer_ids: 0-based decoder-layer indices (as in
    the DFlash config). Returns (batch, n, len(target_layer_ids) * hidden), their dtype.
    """
    if max(target_layer_ids) + 1 >= len(hidden_states):
        raise ValueError(f"target_layer_ids {list(target_layer_ids)} need more than the {len(hidden_states)} hidden states given")
    return torch.cat([hidden_states[i + 1] for i in target_layer_ids], dim=-1)


@dataclass
class _TargetHeads:
    """The target's input embedding and output head: used by the drafter, owned by the target
    (a plain holder, so they are neither saved with nor trained as part of the drafter)."""

    embed_tokens: nn.Module
    lm_head: nn.Module


class DrafterState:
    """Context keys/values of every drafter layer for a batch of sequences.

    keys/values: (num_layers, batch, kv_heads, capacity, head_dim); request ``b`` fills its
    first ``lengths[b]`` slots ((batch,) int64 on the device). ``bound`` (a host int) is at
    least every length: attention reads that many slots, a mask hiding each request's slots
    past its own length once the lengths have differed. Capacity doubles when full (give the
    engine's capacity up front and the storage never moves).
    """

    def __init__(self, config: DFlashConfig, batch_size: int, dtype: torch.dtype, device, capacity: int = 256):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, capacity, config.head_dim)
        # Zeros, not empty: a masked slot is still multiplied by its (zero) probability, and
        # uninitialised memory there can hold NaN, which 0 * NaN would carry into the logits.
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros((batch_size,), dtype=torch.int64, device=device)
        self.bound = 0
        self.ragged = False  # whether the lengths may differ from bound (then draft masks)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]], counts: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> None:
        """Add one (keys, values) pair per layer, each (r, kv_heads, n, head_dim): after every
        request's filled slots (``rows`` None, r = batch), or as the whole new context of the
        requests ``rows`` ((r,) int64 on the device: new requests take those slots; the others
        stay as they are). With ``counts`` ((r,) int64) request b keeps only its first
        ``counts[b]`` (the rest is written but lies past its length)."""
        n = kv[0][0].shape[2]
        extent = n if rows is not None else self.bound + n
        if extent > self.keys.shape[3]:
            grown = max(2 * self.keys.shape[3], extent)
            pad = list(self.keys.shape)
            pad[3] = grown - pad[3]
            self.keys = torch.cat([self.keys, self.keys.new_zeros(pad)], dim=3)
            self.values = torch.cat([self.values, self.values.new_zeros(pad)], dim=3)
        batch, heads, _, head_dim = kv[0][0].shape
        offsets = torch.arange(n, device=self.lengths.device)
        if rows is None:
            index = (self.lengths[:, None] + offsets)[:, None, :, None].expand(batch, heads, n, head_dim)
            for layer, (k, v) in enumerate(kv):
                self.keys[layer].scatter_(2, index, k)
                self.values[layer].scatter_(2, index, v)
            self.lengths += n if counts is None else counts
        else:
            where = (rows[:, None, None], torch.arange(heads, device=rows.device)[None, :, None], offsets[None, None, :])
            for layer, (k, v) in enumerate(kv):
                self.keys[layer].index_put_(where, k)
                self.values[layer].index_put_(where, v)
            self.lengths.index_copy_(0, rows, torch.full_like(rows, n) if counts is None else counts)
        self.bound = max(self.bound, n) if rows is not None else self.bound + n
        self.ragged = self.ragged or counts is not None or rows is not None

    def set_bound(self, longest: int) -> None:
        """The longest request's length, as the caller knows it (tightens ``bound``)."""
        self.bound = longest

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer, :, :, :self.bound], self.values[layer, :, :, :self.bound]

    def block_mask(self, block: int) -> torch.Tensor | None:
        """(batch, 1, block, bound + block) bool, True = may attend: each request's own context
        and the whole block; None while every length equals ``bound``."""
        if not self.ragged:
            return None
        context = torch.arange(self.bound, device=self.lengths.device) < self.lengths[:, None]
        sees = torch.cat([context, context.new_ones((self.batch_size, block))], dim=1)
        return sees[:, None, None, :].expand(-1, 1, block, -1)


class DFlashDrafter(nn.Module):
    """The drafter (weights named as in the published DFlash checkpoints)."""

    def __init__(self, config: DFlashConfig, embed_tokens: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DFlashLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.fc = nn.Linear(len(config.target_layer_ids) * config.hidden_size, config.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)
        self.target = _TargetHeads(embed_tokens, lm_head)
        if config.draft_vocab_size is not None:
            if not 1 <= config.draft_vocab_size <= config.vocab_size:
                raise ValueError(f"draft_vocab_size must be in [1, vocab_size={config.vocab_size}], got {config.draft_vocab_size}")
            self.register_buffer("draft_vocab_ids", torch.arange(config.draft_vocab_size))
        else:
            self.draft_vocab_ids = None
        self._head_rows: tuple | None = None  # (key, lm_head rows of draft_vocab_ids): see head_weight
        self._draft_index: tuple | None = None  # (key, target id -> draft index table): see to_draft_ids

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def target_layer_ids(self) -> list[int]:
        return list(self.config.target_layer_ids)

    @property
    def feature_size(self) -> int:
        return self.fc.in_features

    @property
    def draft_vocab_size(self) -> int:
        """Width of the draft logits: the reduced draft vocabulary, or the target's."""
        return self.config.draft_vocab_size or self.config.vocab_size

    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        """Fix the reduced draft vocabulary: (draft_vocab_size,) distinct target token ids,
        increasing (draft index i drafts target token ``token_ids[i]``)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if self.draft_vocab_ids is None or ids.shape != self.draft_vocab_ids.shape:
            raise ValueError(f"token_ids must have shape ({self.draft_vocab_size},) for this config, got {tuple(ids.shape)}")
        if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()) or int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token_ids must be increasing ids in [0, {self.config.vocab_size})")
        self.draft_vocab_ids.copy_(ids)
        self._head_rows = None

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Target token ids of draft-vocabulary indices (any shape; negative entries, padding,
        stay as they are). The identity without a reduced draft vocabulary."""
        if self.draft_vocab_ids is None:
            return draft_ids
        ids = self.draft_vocab_ids.to(draft_ids.device)
        return torch.where(draft_ids >= 0, ids[draft_ids.clamp(min=0)], draft_ids)

    def to_draft_ids(self, target_ids: torch.Tensor, missing: int = -100) -> torch.Tensor:
        """Draft-vocabulary indices of target token ids; ``missing`` for tokens outside it and
        for negative entries. The identity without a reduced draft vocabulary."""
        if self.draft_vocab_ids is None:
            return target_ids
        key = (target_ids.device, missing, self.draft_vocab_ids._version)
        if self._draft_index is None or self._draft_index[0] != key:  # built once per vocabulary, not per call
            table = torch.full((self.config.vocab_size,), missing, dtype=torch.long, device=target_ids.device)
            table[self.draft_vocab_ids.to(target_ids.device)] = torch.arange(self.draft_vocab_size, device=target_ids.device)
            self._draft_index = (key, table)
        table = self._draft_index[1]
        return torch.where(target_ids >= 0, table[target_ids.clamp(min=0)], missing)

    # -- checkpoints -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, target_model: nn.Module) -> "DFlashDrafter":
        """Load a published-format drafter directory for ``target_model`` (any module with
        ``get_input_embeddings()`` / ``get_output_embeddings()``, e.g. a transformers causal LM).
        The drafter takes the dtype and device of the target's embeddings."""
        config, tensors = read_checkpoint(path)
        embed, head = target_model.get_input_embeddings(), target_model.get_output_embeddings()
        if embed.weight.shape != (config.vocab_size, config.hidden_size):
            raise ValueError(
                f"drafter at {str(path)!r} expects target embeddings of shape ({config.vocab_size}, {config.hidden_size}), "
                f"the target has {tuple(embed.weight.shape)}"
            )
        drafter = cls(config, embed, head)
        # Some exporters save the rotary table; it follows from the config, so it is not read.
        tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
        expected = drafter.state_dict()
        missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
        if missing or unexpected:
            raise ValueError(f"drafter weights at {str(path)!r} do not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"drafter weight {name!r} has shape {tuple(tensor.shape)}, its config needs {tuple(expected[name].shape)}")
        drafter.load_state_dict(tensors)
        drafter = drafter.to(device=embed.weight.device, dtype=embed.weight.dtype).eval()
        if drafter.draft_vocab_ids is not None:
            drafter.set_draft_vocab(drafter.draft_vocab_ids.clone())  # validates the stored ids
        return drafter

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16):
        """Write the published layout (config.json + model.safetensors) with weights in ``dtype``."""
        config = dataclasses.replace(self.config, torch_dtype=str(dtype).removeprefix("torch."))
        return write_checkpoint(path, config, {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.state_dict().items()})

    # -- the forward pieces ------------------------------------------------------------------

    def _context_kv(self, target_hidden: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer context keys/values of (batch, n, F) features at (batch, n) positions."""
        if target_hidden.shape[-1] != self.feature_size:
            raise ValueError(
                f"target_hidden must be (batch, n, {self.feature_size}) = {len(self.target_layer_ids)} layers x hidden, "
                f"got shape {tuple(target_hidden.shape)}"
            )
        ctx = self.hidden_norm(self.fc(target_hidden.to(self.fc.weight.dtype)))
        cos, sin = self.rotary(positions, ctx.dtype)
        return [layer.self_attn.project_kv(ctx, cos, sin) for layer in self.layers]

    def _run_blocks(self, block_ids, block_positions, ctx_kv, visible) -> torch.Tensor:
        """block_ids/block_positions: (batch, q) int64 -> normed hidden states (batch, q, hidden);
        ``visible`` as in ``DFlashAttention.forward``."""
        x = self.target.embed_tokens(block_ids).to(self.fc.weight.dtype)
        cos, sin = self.rotary(block_positions, x.dtype)
        for layer, (k, v) in zip(self.layers, ctx_kv):
            x = layer(x, cos, sin, k, v, visible)
        return self.norm(x)

    def _block_ids(self, roots: torch.Tensor) -> torch.Tensor:
        """roots: (...) int64 -> (..., block_size): each root followed by block_size-1 mask ids."""
        masks = torch.full((*roots.shape, self.block_size - 1), self.config.mask_token_id, dtype=roots.dtype, device=roots.device)
        return torch.cat([roots[..., None], masks], dim=-1)

    def head_weight(self) -> torch.Tensor:
        """(draft_vocab_size, hidden): the target lm_head's rows the drafter scores (gathered
        once and kept while the lm_head and the draft vocabulary stay the same)."""
        weight = self.target.lm_head.weight
        if self.draft_vocab_ids is None:
            return weight
        key = (weight.data_ptr(), weight.device, weight.dtype, weight._version, self.draft_vocab_ids._version)
        if self._head_rows is None or self._head_rows[0] != key:
            self._head_rows = (key, weight.detach().index_select(0, self.draft_vocab_ids.to(weight.device)))
        return self._head_rows[1]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., draft_vocab_size) fp32 logits."""
        weight = self.head_weight()
        bias = getattr(self.target.lm_head, "bias", None)
        if bias is not None and self.draft_vocab_ids is not None:
            bias = bias.index_select(0, self.draft_vocab_ids.to(bias.device))
        # One 2-D matmul: a strided (..., hidden) view would run as a batched matmul with the
        # weight broadcast, several times slower on a CPU.
        rows = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
        return torch.nn.functional.linear(rows, weight, bias).float().view(*hidden.shape[:-1], -1)

    def fold_feature_scale(self, scale: torch.Tensor) -> None:
        """Fold a per-feature input scale into ``fc``: afterwards ``fc(x)`` computes what it
        computed before on ``x * scale``. scale: (feature_size,) float. Training feeds
        channel-normalised features; the folded weights take the target's raw ones."""
        if scale.shape != (self.feature_size,):
            raise ValueError(f"scale must have shape ({self.feature_size},), got {tuple(scale.shape)}")
        with torch.no_grad():
            self.fc.weight.mul_(scale.to(self.fc.weight)[None, :])

    # -- the engine's interface --------------------------------------------------------------

    def new_state(self, batch_size: int, capacity: int = 256) -> DrafterState:
        """An empty context cache for ``batch_size`` sequences of ``capacity`` tokens (it
        grows past that by reallocation)."""
        return DrafterState(self.config, batch_size, self.fc.weight.dtype, self.fc.weight.device, capacity)

    @torch.no_grad()
    def extend(self, state: DrafterState, target_hidden: torch.Tensor, positions: torch.Tensor,
               counts: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> None:
        """Append newly committed tokens to the context.

        target_hidden: (r, n, F) features from ``select_features``; positions: (r, n) int64
        absolute positions of those tokens; counts: (r,) int64, how many of the n request b
        commits (default all: the rest of its row is padding); rows: (r,) int64, requests of
        the state that start afresh with these tokens (new requests in those slots; default:
        every request, extended).
        """
        expected = state.batch_size if rows is None else len(rows)
        if target_hidden.dim() != 3 or target_hidden.shape[0] != expected:
            raise ValueError(f"target_hidden must be (batch={expected}, n, F), got shape {tuple(target_hidden.shape)}")
        if positions.shape != target_hidden.shape[:2]:
            raise ValueError(f"positions must have shape {tuple(target_hidden.shape[:2])}, got {tuple(positions.shape)}")
        state.append(self._context_kv(target_hidden, positions), counts, rows)

    @torch.no_grad()
    def draft(self, state: DrafterState, root_tokens: torch.Tensor, root_positions: torch.Tensor) -> torch.Tensor:
        """One drafter forward over [root, mask x (block_size - 1)] after the cached context.

        root_tokens: (batch,) int64, the last committed token (not yet in the context);
        root_positions: (batch,) int64, its position. Returns draft_logits:
        (batch, block_size - 1, draft_vocab_size) fp32, row k predicting the token at
        root_position + 1 + k; column j is target token ``to_target_ids(j)``.
        """
        if root_tokens.shape != (state.batch_size,) or root_positions.shape != (state.batch_size,):
            raise ValueError(
                f"root_tokens and root_positions must be ({state.batch_size},), got {tuple(root_tokens.shape)} and {tuple(root_positions.shape)}"
            )
        offsets = torch.arange(self.block_size, device=root_positions.device)
        ctx_kv = [state.layer_kv(i) for i in range(len(self.layers))]
        hidden = self._run_blocks(self._block_ids(root_tokens), root_positions[:, None] + offsets, ctx_kv,
                                  state.block_mask(self.block_size))
        return self._logits(hidden[:, 1:])

    # -- training and offline evaluation -----------------------------------------------------

    def anchor_hidden(self, target_hidden: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """The drafted positions' final hidden states for many roots of one sequence in one
        pass (what ``draft`` would score after ``extend`` with everything before each root).

        target_hidden: (batch, S, F) features of a whole sequence; positions, tokens: (batch, S)
        int64; anchors: (batch, M) int64 indices into S of the roots. Block m sees the context
        of indices < anchors[m] and its own block only (``BlockContext``: no work on the pairs
        it does not see). Returns (batch, M, block_size - 1, hidden) (with gradients when
        enabled); ``head_weight`` scores them.
        """
        batch, seq = tokens.shape
        num_blocks, gamma = anchors.shape[1], self.block_size
        ctx_kv = self._context_kv(target_hidden, positions)
        block_ids = self._block_ids(tokens.gather(1, anchors)).reshape(batch, num_blocks * gamma)
        offsets = torch.arange(gamma, device=tokens.device)
        block_positions = (positions.gather(1, anchors)[..., None] + offsets).reshape(batch, num_blocks * gamma)
        sees_context = torch.arange(seq, device=tokens.device) < anchors[..., None]  # (batch, M, S)
        hidden = self._run_blocks(block_ids, block_positions, ctx_kv, BlockContext(sees_context, gamma))
        return hidden.view(batch, num_blocks, gamma, -1)[:, :, 1:]

    def anchor_logits(self, target_hidden: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``anchor_hidden`` scored: (batch, M, block_size - 1, draft_vocab_size) fp32."""
        return self._logits(self.anchor_hidden(target_hidden, positions, tokens, anchors))


def load_drafter(path: str | os.PathLike | None, target_model: nn.Module) -> DFlashDrafter:
    """The drafter at ``path`` (published DFlash layout), or with None the committed default
    trained for the embedded SmolLM2-135M-Instruct target (``bastion/weights``)."""
    if path is None:
        from bastion.weights import DEFAULT_DRAFTER_DIR

        path = DEFAULT_DRAFTER_DIR
    return DFlashDrafter.from_pretrained(path, target_model)
