"""Training a DFlash drafter for a target (``bastion train-drafter``).

- ``tokens``: the target's greedy continuations of the prompt sets, as committed token chunks;
- ``features``: teacher-forced target forwards over them (features, hard and soft labels), cached;
- ``init``: a new drafter started from the target (sizes, final norm, optionally its layers);
- ``loss``: the position-weighted objective over every root of a sequence in one forward;
- ``evaluate``: held-out acceptance walked with ``bastion_ext.ops``;
- ``loop``: the run, resumable; ``config``: its settings; ``cli``: the command line.
"""

from .config import TrainConfig

__all__ = ["TrainConfig"]
