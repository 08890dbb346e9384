"""A model's linear layers through ``skinny_linear`` for the few rows of a decode step or a
tree verify, on the CPU in fp32.

Why: there a verify of even one tree node cost 1.7 plain steps, most of it torch's GEMM at
2 to 5 rows, far off the weight-streaming speed that one row gets. On an AMD EPYC with AVX2,
2 threads, SmolLM2-135M at context 128, a forward of 1, 2, 3, 5, 9 and 17 tokens took 55.0,
90.5, 115.5, 89.4, 105.7 and 119.0 ms through ``F.linear``, and 55.1, 64.8, 70.0, 79.9, 117.6
and 126.8 ms with every layer through ``skinny_linear``: so it takes up to ``SKINNY_MAX_ROWS``
rows, where it wins or ties, and the small trees a speculative decoder verifies on such a CPU
cost far less. Within that range every output is summed in one order whatever the rows beside
it (docs/ops.md): a verify's root row and a plain step's agree to the bit in every layer.

A layer keeps torch's ``F.linear`` for more rows (a prefill, a wide verify, where the GEMM is
as good or better), for inputs that are not fp32, and where autograd records a graph (the op
has no backward).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from bastion_ext import _C  # noqa: F401  (importing it registers torch.ops.bastion_ext)

# Rows up to which skinny_linear wins or ties on the CPU measured (module docstring).
SKINNY_MAX_ROWS = 8


def _skinny_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    features = x.shape[-1]
    rows = x.numel() // features if features else 0
    if (0 < rows <= SKINNY_MAX_ROWS and x.dtype is torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
        out = torch.ops.bastion_ext.skinny_linear(x.reshape(rows, features).contiguous(), self.weight)
        out = out.reshape(*x.shape[:-1], self.weight.shape[0])
        return out if self.bias is None else out + self.bias
    return F.linear(x, self.weight, self.bias)


def use_skinny_linear(model: torch.nn.Module) -> int:
    """Route the ``torch.nn.Linear`` layers of ``model`` whose weights are fp32, on the CPU and
    contiguous through ``skinny_linear`` up to ``SKINNY_MAX_ROWS`` rows (module docstring);
    the others are left alone. Returns how many layers now take it."""
    count = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
                and module.weight.device.type == "cpu" and module.weight.is_contiguous()):
            module.forward = types.MethodType(_skinny_forward, module)
            count += 1
    return count
