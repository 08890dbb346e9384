"""Building blocks of the DFlash drafter: RMSNorm, rotary embedding, the context-plus-block
attention and the decoder layer. Parameter names follow the published checkpoints
(``layers.{i}.self_attn.q_proj.weight`` ...), so ``load_state_dict`` reads them as stored."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DFlashConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in fp32 (as Qwen3 does)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(x.dtype)


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama-3.1 frequency rescaling: long wavelengths divided by ``factor``, short ones kept,
    a smooth blend in between."""
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary position embedding for arbitrary (batch, n) positions."""

    def __init__(self, config: DFlashConfig):
        super().__init__()
        dim = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        if config.rope_scaling is not None:
            inv_freq = _llama3_scaled(inv_freq, config.rope_scaling)
        # A plain attribute, not a buffer: published checkpoints do not store it, and casting
        # the drafter to bf16 must not round the frequencies.
        self.inv_freq = inv_freq.float()

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (batch, n) int64 -> cos, sin: (batch, 1, n, head_dim) of ``dtype``."""
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated_half * sin


class DFlashAttention(nn.Module):
    """Block queries attend, without a causal mask, to the context keys/values (projected target
    features) followed by the block's own keys/values. Qwen3-style per-head q/k norms."""

    def __init__(self, config: DFlashConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def project_kv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h: (batch, n, hidden) -> keys (rotated) and values, each (batch, kv_heads, n, head_dim)."""
        b, n, _ = h.shape
        k = self.k_norm(self.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return _rotate(k, cos, sin), v

    def forward(self, h, cos, sin, ctx_k, ctx_v, visible):
        """h: (batch, q, hidden) normed block states; ctx_k/ctx_v: (batch, kv_heads, c, head_dim).

        visible: None (one block, everything visible), a (batch, 1, q, c + q) bool mask (True =
        may attend), or a :class:`BlockContext` (many blocks of one sequence: see there).
        """
        b, n, _ = h.shape
        q = _rotate(self.q_norm(self.q_proj(h).view(b, n, self.num_heads, self.head_dim)).transpose(1, 2), cos, sin)
        k, v = self.project_kv(h, cos, sin)
        if isinstance(visible, BlockContext):
            out = visible.attend(q, k, v, ctx_k, ctx_v)
        else:
            k, v = torch.cat([ctx_k, k], dim=2), torch.cat([ctx_v, v], dim=2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class BlockContext:
    """Which context keys each of many blocks sees, for the one-pass training forward.

    The queries are ``blocks`` consecutive blocks of ``block_size`` tokens; block m sees the
    context keys where ``sees_context[:, m]`` and its own block (both ways), no other block.
    Attention runs in two parts merged under one softmax: queries x context (masked) and each
    block x itself, so no work is spent on the (blocks x block_size)^2 cross-block pairs a dense
    mask would compute and throw away.

    sees_context: (batch, blocks, c) bool.
    """

    def __init__(self, sees_context: torch.Tensor, block_size: int):
        self.block_size = block_size
        self.hidden = ~sees_context[:, None, None, :, None, :]  # (batch, 1, 1, blocks, 1, c)

    def attend(self, q, k, v, ctx_k, ctx_v) -> torch.Tensor:
        """q: (batch, heads, blocks * block_size, d); k, v: (batch, kv_heads, blocks *
        block_size, d); ctx_k, ctx_v: (batch, kv_heads, c, d) -> (batch, heads, blocks *
        block_size, d)."""
        b, heads, n, d = q.shape
        kv_heads, c, g = k.shape[1], ctx_k.shape[2], self.block_size
        m = n // g
        qg = q.view(b, kv_heads, heads // kv_heads, m, g, d) * d ** -0.5
        to_context = (qg.flatten(3, 4) @ ctx_k[:, :, None].transpose(-1, -2)).view(b, kv_heads, -1, m, g, c)
        to_block = qg @ k.view(b, kv_heads, 1, m, g, d).transpose(-1, -2)  # (b, kv, rep, m, g, g)
        scores = torch.cat([to_context.masked_fill(self.hidden, float("-inf")), to_block], dim=-1)
        probs = scores.float().softmax(-1).to(v.dtype)
        out = (probs[..., :c].flatten(3, 4) @ ctx_v[:, :, None]).view_as(qg)
        out = out + probs[..., c:] @ v.view(b, kv_heads, 1, m, g, d)
        return out.view(b, heads, n, d)


class SwiGLU(nn.Module):
    def __init__(self, config: DFlashConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DFlashLayer(nn.Module):
    """Pre-norm decoder layer; the context enters only as keys/values of the attention (the
    layer's input norm applies to the block, the context was normed once by ``hidden_norm``)."""

    def __init__(self, config: DFlashConfig):
        super().__init__()
        self.self_attn = DFlashAttention(config)
        self.mlp = SwiGLU(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, ctx_k, ctx_v, visible):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx_k, ctx_v, visible)
        return x + self.mlp(self.post_attention_layernorm(x))
