"""The committed drafter for the embedded SmolLM2-135M-Instruct target (see RECIPE.md)."""

from pathlib import Path

DEFAULT_DRAFTER_DIR = Path(__file__).resolve().parent
