"""``python -m bastion``: the same as the ``bastion`` command."""

import sys

try:
    from bastion.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch and transformers import: no traceback
    print("bastion: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
