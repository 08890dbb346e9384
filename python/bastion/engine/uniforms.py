"""Counter-based uniforms: the uniform for (seed, request, absolute position) is a hash of the
three, computed with int64 tensor ops on the tensors' device (no generator state, no host
read). Every strategy therefore draws the same uniform for the same token of the same
request, however many rounds or tree nodes it took to get there, which is what lets
sample-and-match reproduce ``ar``'s samples exactly.

The hash is SplitMix64's finaliser (Steele et al., 2014), chained over the three keys. Its
arithmetic is modulo 2**64: int64 tensor addition and multiplication wrap, and the logical
right shift is an arithmetic shift with the sign-extended bits masked off.
"""

from __future__ import annotations

import torch

_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_FRACTION_BITS = 24  # a float32 holds 24 significant bits: k / 2**24 is exact and < 1


def _signed(value: int) -> int:
    """``value`` modulo 2**64 as the int64 with the same bits."""
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """One SplitMix64 step: add the golden gamma, then finalise (a bijection on 64 bits)."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _shift_right(z, 30)) * _signed(_MUL1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MUL2)
    return z ^ _shift_right(z, 31)


def counter_uniforms(seed: int, requests: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The uniforms in [0, 1) keyed by (seed, request, position).

    Parameters
    ----------
    seed : any Python int (taken modulo 2**64).
    requests : (B,) int64, each row's request index in its ``generate_batch`` call.
    positions : (B, M) int64, the absolute position (prompt tokens first, from 0) of the token
        each uniform samples.

    Returns
    -------
    (B, M) float32 on ``positions``' device, multiples of 2**-24.
    """
    key = _mix(torch.full_like(requests, _signed(seed)))
    key = _mix(key ^ requests)
    z = _mix(key[:, None] ^ positions)
    return _shift_right(z, 64 - _FRACTION_BITS).to(torch.float32) * 2.0 ** -_FRACTION_BITS
