"""The DFlash block-diffusion drafter: architecture, published-format checkpoints, features."""

from .config import DFlashConfig, default_target_layer_ids
from .model import DFlashDrafter, DrafterState, load_drafter, select_features

__all__ = ["DFlashConfig", "DFlashDrafter", "DrafterState", "default_target_layer_ids", "load_drafter", "select_features"]
