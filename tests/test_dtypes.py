"""``--dtype auto``: bf16 only where the CPU has fast bf16 matmuls (or on CUDA)."""

import pytest
import torch

from bastion.dtypes import cpu_has_fast_bf16, resolve_dtype

ZEN1 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def test_fast_bf16_is_read_from_the_cpu_flags():
    assert not cpu_has_fast_bf16(ZEN1)
    assert cpu_has_fast_bf16(SAPPHIRE) and cpu_has_fast_bf16(ZEN4)
    assert not cpu_has_fast_bf16("")


def test_explicit_dtypes_and_errors():
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("float16")
