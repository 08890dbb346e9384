"""The drafter's input features, caught from the target's forward at the layers it reads.

``output_hidden_states=True`` makes transformers record every decoder layer's output through
its own hooks on all of them (30 on the embedded model): 0.3 ms of a 45 ms batch-4 step on
the CPU, paid by every plain step of a speculative batch, which then keeps three. Forward hooks on
the drafter's layers alone, on for one forward, catch the same tensors.

The features are those of ``bastion.drafter.select_features`` over transformers' tuple,
bit for bit: entry ``i + 1`` of that tuple is the output of decoder layer ``i``, except the
last layer's, which transformers replaces by the final norm's output (``last_hidden_state``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class LayerFeatures:
    """Catches the outputs of the decoder layers ``layer_ids`` (0-based, as in a DFlash
    config) of ``model`` (a Hugging Face causal LM whose ``base_model.layers`` are its decoder
    layers)."""

    def __init__(self, model, layer_ids: tuple[int, ...]):
        self.layers = model.base_model.layers
        count = len(self.layers)
        if not layer_ids or any(not 0 <= i < count for i in layer_ids):
            raise ValueError(f"layer_ids must name decoder layers 0..{count - 1}, got {list(layer_ids)}")
        self.layer_ids = tuple(layer_ids)
        self._last = count - 1
        self._caught: dict[int, torch.Tensor] = {}

    def _catch(self, index: int):
        def hook(module, args, output):
            # Decoder layers return their hidden states, alone (transformers 5) or first in a tuple (4.x).
            self._caught[index] = output[0] if isinstance(output, tuple) else output
        return hook

    @contextmanager
    def catching(self):
        """Hooks on the layers for the forwards run inside (the model is shared: none outlives them)."""
        handles = [self.layers[i].register_forward_hook(self._catch(i)) for i in set(self.layer_ids) if i != self._last]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def features(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """(batch, n, len(layer_ids) * d) of the forward just run inside :meth:`catching`;
        ``last_hidden`` (batch, n, d) is its ``last_hidden_state``."""
        try:
            return torch.cat([last_hidden if i == self._last else self._caught[i] for i in self.layer_ids], dim=-1)
        finally:
            self._caught.clear()
