"""What the ``bastion`` subcommands share: the user-error type, list arguments, model loading
with loading failures turned into user errors. (``cli`` and ``bench`` both import this;
neither imports the other's internals.)"""

from __future__ import annotations

import os


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, never a traceback."""


def int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{name} must be integers >= 1, got {text!r}")
    return values


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
        raise UserError(f"cannot load the model {args.model or '(embedded)'}: {type(err).__name__}: {first_line(err)}") from None
    drafter = None
    if need_drafter:
        from .drafter import load_drafter

        try:
            drafter = load_drafter(args.drafter, model)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"cannot load the drafter {args.drafter or '(default)'}: {type(err).__name__}: {first_line(err)}") from None
    return model, tokenizer, drafter


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
