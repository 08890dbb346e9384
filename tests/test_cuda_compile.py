"""Every CUDA source compiles with the machine's nvcc for sm_80 and sm_90a (compile only).

Runs without a GPU: /usr/local/cuda provides the headers. Skipped only where nvcc is missing.
(The ``*_cuda.cpp`` torch adapters need c10/cuda's generated headers, which only a CUDA build
of torch ships; the GPU machine's ``BASTION_CUDA=1`` build covers them.) Sources include each
other with quotes, resolved next to the including file, so no ``-I csrc`` is needed.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
NVCC = os.environ.get("CUDACXX") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
ARCHS = {"sm_80": "arch=compute_80,code=sm_80", "sm_90a": "arch=compute_90a,code=sm_90a"}
TORCH_INCLUDES = [Path(torch.__file__).parent / "include", Path(torch.__file__).parent / "include/torch/csrc/api/include"]

needs_nvcc = pytest.mark.skipif(not Path(NVCC).is_file(), reason=f"nvcc not found ({NVCC})")


def _nvcc(source: Path, out: Path, extra: list[str]) -> None:
    includes = [f"-I{p}" for p in TORCH_INCLUDES]
    cmd = [NVCC, "-std=c++17", "-O3", "--fmad=false", *extra, *includes, "-c", str(source), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cu_file_compiles(source, arch, tmp_path):
    _nvcc(source, tmp_path / f"{source.stem}.o", ["-gencode", ARCHS[arch]])


def test_there_are_cuda_sources_to_compile():
    assert CU_FILES, f"no .cu files under {CSRC}"
