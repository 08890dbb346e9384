"""Output files that a failed run cannot damage: paths checked before any work starts, and
results written beside the destination, renamed onto it only once complete."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .cli_support import UserError


def check_writable(path: str, option: str, source: str | None = None, make_parents: bool = False) -> None:
    """UserError naming ``option`` unless ``path`` can be written as a file: not a directory,
    not the same file as ``source`` (an input), its directory writable, and existing unless
    ``make_parents`` (then its nearest existing ancestor must be writable)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{option} {path!r} is a directory; give a file path")
    if source is not None and target.exists() and os.path.samefile(target, source):
        raise UserError(f"{option} {path!r} is the input file itself; give another path")
    parent = target.resolve().parent
    if not parent.is_dir() and not make_parents:
        raise UserError(f"{option} {path!r}: directory {str(parent)!r} does not exist")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"{option} {path!r}: not writable")


class AtomicLines:
    """A text file written line by line to a temporary file in the destination's directory
    and renamed onto ``path`` when the ``with`` block completes, so an existing ``path``
    is never truncated by a run that fails. If the block fails after some lines were
    written and ``keep_partial``, they are kept as ``<path>.partial`` (reported on stderr);
    otherwise the temporary file is removed."""

    def __init__(self, path: str, keep_partial: bool = True):
        self.path = path
        self.keep_partial = keep_partial
        self.lines = 0

    def __enter__(self) -> AtomicLines:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".tmp", dir=directory)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        return self

    def write_line(self, text: str) -> None:
        self._file.write(text + "\n")
        self._file.flush()
        self.lines += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            try:
                os.replace(self._tmp, self.path)
            except BaseException:
                os.unlink(self._tmp)
                raise
        elif self.lines and self.keep_partial:
            os.replace(self._tmp, self.path + ".partial")
            print(f"bastion: kept the {self.lines} finished result(s) in {self.path}.partial; {self.path} is untouched",
                  file=sys.stderr)
        else:
            os.unlink(self._tmp)
