"""The reference decoding engine: a Hugging Face target, a drafter, and the tree ops."""

from .loop import GenerationConfig, GenerationResult, generate, generate_batch
from .sampling import Sampler
from .strategies import STRATEGIES

__all__ = ["GenerationConfig", "GenerationResult", "Sampler", "STRATEGIES", "generate", "generate_batch"]
