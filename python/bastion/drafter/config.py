"""The DFlash drafter's configuration, read from and written to the published config.json.

The published DFlash drafters (e.g. z-lab/Qwen3-8B-DFlash-b16) store a Qwen3-style config with
``"architectures": ["DFlashDraftModel"]`` plus ``block_size``, ``num_target_layers`` and a
``dflash_config`` object holding ``target_layer_ids`` and ``mask_token_id``. Only the keys this
architecture uses are kept; anything the architecture cannot honour (sliding-window layers, an
activation other than SiLU, an unknown rotary scaling) is refused by name rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SUPPORTED_ROPE_TYPES = ("default", "llama3")


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """DFlash's default choice of target layers when the config names none: one per drafter
    layer, spread evenly from layer 1 to layer ``num_target_layers - 3`` (the middle layer when
    the drafter has a single layer)."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    first, last = 1, num_target_layers - 3
    return [round(first + i * (last - first) / (num_draft_layers - 1)) for i in range(num_draft_layers)]


@dataclass(frozen=True)
class DFlashConfig:
    """Sizes of one DFlash drafter.

    ``target_layer_ids`` are 0-based target decoder-layer indices: layer ``i``'s output is entry
    ``i + 1`` of a Hugging Face ``hidden_states`` tuple (entry 0 is the embeddings).
    ``draft_vocab_size``: None to draft over the whole vocabulary; else the drafter scores only
    that many target tokens (the weight ``draft_vocab_ids`` lists them, as EAGLE-3's reduced
    draft vocabulary does): the target's lm_head rows of just those tokens, a fraction of the
    cost on a CPU; a token outside them is never drafted (the round just accepts less).
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    block_size: int
    mask_token_id: int
    target_layer_ids: tuple[int, ...]
    num_target_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    torch_dtype: str = "bfloat16"
    draft_vocab_size: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, cfg: dict) -> "DFlashConfig":
        """Parse a published DFlash config.json (already loaded as a dict)."""
        dflash = cfg.get("dflash_config") or {}

        def need(key, value):
            if value is None:
                raise ValueError(f"drafter config.json has no {key!r}")
            return value

        num_layers = int(need("num_hidden_layers", cfg.get("num_hidden_layers")))
        num_heads = int(need("num_attention_heads", cfg.get("num_attention_heads")))
        hidden = int(need("hidden_size", cfg.get("hidden_size")))
        num_target_layers = int(need("num_target_layers", cfg.get("num_target_layers")))
        layer_ids = dflash.get("target_layer_ids") or default_target_layer_ids(num_target_layers, num_layers)
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"drafter config.json: hidden_act must be 'silu', got {cfg['hidden_act']!r}")
        layer_types = cfg.get("layer_types") or ["full_attention"] * num_layers
        if cfg.get("use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise ValueError(f"drafter config.json: only full-attention layers are supported, got layer_types={layer_types}")
        # transformers >= 5 nests rope settings in rope_parameters; published files use the flat keys.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"drafter config.json: rope type must be one of {SUPPORTED_ROPE_TYPES}, got {rope_type!r}")
        return cls(
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size", cfg.get("intermediate_size"))),
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or hidden // num_heads),
            vocab_size=int(need("vocab_size", cfg.get("vocab_size"))),
            block_size=int(need("block_size", cfg.get("block_size", dflash.get("block_size")))),
            mask_token_id=int(need("dflash_config.mask_token_id", dflash.get("mask_token_id", cfg.get("mask_token_id")))),
            target_layer_ids=tuple(int(i) for i in layer_ids),
            num_target_layers=num_target_layers,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope if rope_type != "default" else None,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
            draft_vocab_size=int(cfg["draft_vocab_size"]) if cfg.get("draft_vocab_size") else None,
            extra={k: v for k, v in cfg.items() if k.startswith("bastion")},
        )

    def to_dict(self) -> dict:
        """The config.json a published DFlash drafter of these sizes carries."""
        cfg = {
            "architectures": ["DFlashDraftModel"],
            "model_type": "qwen3",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "layer_types": ["full_attention"] * self.num_hidden_layers,
            "tie_word_embeddings": False,
            "torch_dtype": self.torch_dtype,
            "block_size": self.block_size,
            "num_target_layers": self.num_target_layers,
            "dflash_config": {"mask_token_id": self.mask_token_id, "target_layer_ids": list(self.target_layer_ids)},
        }
        if self.draft_vocab_size is not None:
            cfg["draft_vocab_size"] = self.draft_vocab_size
        cfg.update(self.extra)
        return cfg
