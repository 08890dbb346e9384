"""One dataclass holds every setting of a drafter training run; the CLI fills it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LAYER_IDS = (1, 10, 19, 28)
WARM_STARTS = ("none", "last", "spread")


@dataclass
class TrainConfig:
    """Settings of ``bastion train-drafter`` (defaults: the committed drafter's recipe).

    Data: ``data_dir/{train,eval}_tokens`` hold the token chunks (generated when missing);
    ``out`` the work: the feature cache, the resumable state, the exported drafter.
    Model: ``layers`` decoder layers, ``block_size`` (one root + block_size - 1 drafted
    positions), ``draft_vocab`` tokens scored (0: the whole vocabulary), ``warm_start`` copies
    target layers into the drafter's (``last``: the last ``layers``, ``spread``: evenly spaced).
    Loss: weight ``decay ** k`` on drafted position k (mean 1); ``soft`` mixes in the
    cross-entropy against the teacher's top-``soft_topk`` distribution (0 = hard labels only).
    Schedule: ``epochs`` passes over the training roots, ``seqs_per_step`` sequences (all their
    roots) per optimizer step, AdamW at ``lr`` with ``warmup`` as a fraction of the steps, then a
    cosine to 10%.
    """

    out: Path
    target: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    data_dir: Path | None = None
    threads: int | None = None
    # data
    max_new_tokens: int = 384
    gen_batch: int = 64
    gen_minutes: float | None = None
    max_train_prompts: int | None = None
    max_eval_prompts: int | None = None
    soft_topk: int = 32
    # model
    layers: int = 3
    block_size: int = 6
    draft_vocab: int = 16384
    target_layer_ids: tuple[int, ...] = DEFAULT_LAYER_IDS
    warm_start: str = "none"
    # loss and schedule
    decay: float = 0.7
    soft: float = 0.0
    epochs: float = 1.0
    seqs_per_step: int = 2
    lr: float = 3e-3
    warmup: float = 0.04
    save_every: int = 50
    seed: int = 0
    # evaluation
    eval_limit: int | None = None
    tree_budgets: tuple[int, ...] = field(default=(16, 32, 64))
    tree_width: int = 8

    def __post_init__(self):
        self.out = Path(self.out)
        if self.data_dir is None:
            from bastion.weights import DEFAULT_DRAFTER_DIR

            self.data_dir = DEFAULT_DRAFTER_DIR
        self.data_dir = Path(self.data_dir)
        checks = [
            (self.layers >= 1, f"layers must be >= 1, got {self.layers}"),
            (self.block_size >= 2, f"block_size must be >= 2, got {self.block_size}"),
            (self.draft_vocab >= 0, f"draft_vocab must be >= 0, got {self.draft_vocab}"),
            (self.warm_start in WARM_STARTS, f"warm_start must be one of {WARM_STARTS}, got {self.warm_start!r}"),
            (0 < self.decay <= 1, f"decay must be in (0, 1], got {self.decay}"),
            (0 <= self.soft <= 1, f"soft must be in [0, 1], got {self.soft}"),
            (self.soft_topk >= 1, f"soft_topk must be >= 1, got {self.soft_topk}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.seqs_per_step >= 1, f"seqs_per_step must be >= 1, got {self.seqs_per_step}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup must be a fraction in [0, 1), got {self.warmup}"),
            (self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}"),
            (self.tree_width >= 1 and all(n >= 1 for n in self.tree_budgets), "tree_width and tree_budgets must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def model_key(self) -> dict:
        """The settings a resumed run must share with the saved state."""
        keys = ("layers", "block_size", "draft_vocab", "target_layer_ids", "warm_start", "decay", "soft", "epochs",
                "seqs_per_step", "lr", "warmup", "seed", "max_train_prompts")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if k in keys}
