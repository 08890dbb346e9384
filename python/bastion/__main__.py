"""``python -m bastion`` and the ``bastion`` command (``run``)."""

import os
import sys
import threading
import _thread


def _deliver_lost_interrupt(unraisable) -> None:
    """``sys.unraisablehook`` of the command: a Ctrl-C that lands while a finaliser runs (the
    tokenizer's regex objects are collected during the model's load) is printed as "Exception
    ignored" and lost, and the command would run on to the end; it is delivered again to the
    main thread a millisecond later, from another thread (from this one it would be raised in
    this hook, and lost again), where the next bytecode raises it as any Ctrl-C."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    again = threading.Timer(0.001, _thread.interrupt_main)
    again.daemon = True
    again.start()


def run() -> int:
    """The command's body, returning its exit code: ``bastion.cli.main``, imported here so that a Ctrl-C while
    torch and transformers import (seconds) ends with one line, not a traceback. Nothing of
    the package is imported before the ``try``: the window of a bare interrupt is the
    interpreter's own start. ``main`` is called inside it too: it parses its options before
    its own ``try``, and an interrupt there escaped (CI's machine: exit by SIGINT, -2, when
    the imports took a second)."""
    sys.unraisablehook = _deliver_lost_interrupt
    try:
        from bastion.cli import main

        return main()
    except KeyboardInterrupt:
        from bastion.cli_support import EXIT_INTERRUPTED  # light: no torch

        print("bastion: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def command() -> None:
    """The ``bastion`` command and ``python -m bastion``: ``run``, then exit with its code.
    After a Ctrl-C the process ends at once, its streams flushed (``os._exit``): CPython 3.11
    marks an interrupt that lands in ``exec`` of a string (a dataclass being made while torch
    imports) as unhandled although ``run`` caught it, and its shutdown then ends the process by
    SIGINT (-2) instead of 130 (one Ctrl-C in six, 1 s in, with an empty cache)."""
    code = run()
    from bastion.cli_support import EXIT_INTERRUPTED  # imported by run(), or light: no torch

    if code == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing left to deliver
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    command()
