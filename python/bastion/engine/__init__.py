"""The reference decoding engine: a Hugging Face target, a drafter, and the tree ops."""

from .config import GenerationConfig
from .loop import Decoding, generate, generate_batch, open_batch
from .records import GenerationResult
from .sampling import Sampler
from .strategies import STRATEGIES

__all__ = ["Decoding", "GenerationConfig", "GenerationResult", "Sampler", "STRATEGIES", "generate", "generate_batch", "open_batch"]
