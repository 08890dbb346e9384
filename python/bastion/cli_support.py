"""What the ``bastion`` subcommands share: the user-error type, list arguments, model loading
with loading failures turned into user errors. (``cli`` and ``bench`` both import this;
neither imports the other's internals.)"""

from __future__ import annotations

import os

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, never a traceback."""


def int_list(text: str, name: str, limit: int | None = None) -> list[int]:
    """The comma-separated integers of option ``name``, each in 1..limit (no upper bound if None)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{name} must be integers >= 1, got {text!r}")
    if limit is not None and max(values) > limit:
        raise UserError(f"{name} must be integers <= {limit}, got {text!r}")
    return values


def load_prompt_rows(path: str) -> list[dict]:
    """The rows of the ``--prompts`` file (``prompts.load_prompt_file``), an unreadable file
    a UserError."""
    from .prompts import load_prompt_file

    try:
        return load_prompt_file(path)
    except OSError as err:
        raise UserError(f"--prompts: cannot read {path!r}: {err.strerror or err}") from None


def check_latency_path(path: str | None) -> None:
    """An explicit ``--latency`` must exist: a mistyped path would otherwise start a
    minutes-long calibration and save it there."""
    if path is not None and not os.path.isfile(path):
        raise UserError(f"--latency {path!r} does not exist (make it with `bastion calibrate --out {path}`, "
                        "or leave --latency out to use the per-model cache)")


def load_models(args, need_drafter: bool):
    """(model, tokenizer, drafter or None), with loading failures as UserError."""
    import torch

    from .dtypes import resolve_dtype
    from .models import load_target

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    if need_drafter and args.drafter is not None and not os.path.exists(args.drafter):
        raise UserError(f"drafter path {args.drafter!r} does not exist")
    try:
        model, tokenizer = load_target(args.model, dtype=resolve_dtype(args.dtype, args.device), device=args.device)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    except Exception as err:  # noqa: BLE001  a corrupt or foreign file fails deep inside transformers
        name = args.model or "(embedded)"
        if str(args.model).endswith(".gguf") and not gguf_is_complete(args.model):
            raise UserError(f"cannot load the model {name}: not a complete GGUF file (truncated or corrupt)") from None
        raise UserError(f"cannot load the model {name}: {type(err).__name__}: {first_line(err)}") from None
    drafter = None
    if need_drafter:
        from .drafter import load_drafter

        try:
            drafter = load_drafter(args.drafter, model)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"cannot load the drafter {args.drafter or '(default)'}: {type(err).__name__}: {first_line(err)}") from None
    return model, tokenizer, drafter


def gguf_is_complete(path: str) -> bool:
    """Whether gguf's own reader can map every tensor of ``path`` (asked only after a load
    failed: it takes seconds, and transformers' errors for a cut file name no file)."""
    import gguf

    try:
        gguf.GGUFReader(path)
    except Exception:  # noqa: BLE001  any failure of the reader means the file is not usable
        return False
    return True


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
