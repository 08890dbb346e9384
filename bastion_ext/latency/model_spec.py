"""What the roofline needs to know about a target model: its sizes, and the FLOPs and bytes of
one forward pass derived from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_ELEMENT_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a decoder-only transformer with gated MLPs and grouped-query attention.

    ``element_bytes`` is the size of one weight / KV-cache element (2 for bf16, 4 for fp32).
    """

    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    element_bytes: int = 2

    def __post_init__(self):
        for name in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "intermediate_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.element_bytes not in (1, 2, 4):
            raise ValueError(f"element_bytes must be 1, 2 or 4, got {self.element_bytes!r}")

    @classmethod
    def from_hf_config(cls, config, element_bytes: int | None = None) -> "ModelSpec":
        """Read a Hugging Face Llama/Qwen-style config object (duck-typed: any object with
        ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ``intermediate_size``,
        ``vocab_size`` and optionally ``num_key_value_heads``, ``head_dim``, ``torch_dtype`` / ``dtype``).
        """
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if element_bytes is None:
            dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            element_bytes = _ELEMENT_BYTES.get(str(dtype).removeprefix("torch."), 2)
        return cls(
            n_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            element_bytes=element_bytes,
        )

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer: q, k, v, o projections and the gated MLP (norms ignored)."""
        d, hd = self.hidden_size, self.head_dim
        attention = d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        return attention + 3 * d * self.intermediate_size

    def layer_cost(self, n_tokens: torch.Tensor, context_len: torch.Tensor, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """FLOPs and bytes moved by one decoder layer for a forward of new tokens over a KV cache.

        n_tokens: float64 tensor, new tokens in the forward summed over the batch.
        context_len: float64 tensor broadcastable with ``n_tokens``, cached tokens per request
        (the batch mean). batch: requests in the forward; each attends to its own cache and
        its ``n_tokens / batch`` new tokens.
        Returns (flops, bytes), float64 tensors of the broadcast shape.
        """
        attended = context_len + n_tokens / batch
        attention_flops = 4.0 * n_tokens * attended * self.head_dim * self.n_heads
        flops = 2.0 * n_tokens * self.layer_params + attention_flops
        kv_row = 2.0 * self.n_kv_heads * self.head_dim * self.element_bytes
        # Activations: the residual stream in and out, q/k/v/o and the MLP's intermediates.
        activation_row = (4.0 * self.hidden_size + 3.0 * self.intermediate_size) * self.element_bytes
        bytes_moved = self.layer_params * self.element_bytes + kv_row * (batch * context_len + n_tokens) + activation_row * n_tokens
        return flops, bytes_moved

    def head_cost(self, n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FLOPs and bytes of the LM head (fp32 logits) for ``n_tokens`` (float64 tensor)."""
        flops = 2.0 * n_tokens * self.hidden_size * self.vocab_size
        bytes_moved = self.hidden_size * self.vocab_size * self.element_bytes + 4.0 * self.vocab_size * n_tokens
        return flops, bytes_moved
