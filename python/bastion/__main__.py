"""``python -m bastion`` and the ``bastion`` command (``run``)."""

import sys


def run() -> int:
    """The command's entry point: ``bastion.cli.main``, imported here so that a Ctrl-C while
    torch and transformers import (seconds) ends with one line, not a traceback. Nothing of
    the package is imported before the ``try``: the window of a bare interrupt is the
    interpreter's own start."""
    try:
        from bastion.cli import main
    except KeyboardInterrupt:
        from bastion.cli_support import EXIT_INTERRUPTED  # light: no torch

        print("bastion: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return main()


if __name__ == "__main__":
    sys.exit(run())
