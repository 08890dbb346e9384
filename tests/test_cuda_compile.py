"""Every CUDA source compiles with the machine's nvcc for sm_80 and sm_90a (compile only), and
every ``*_cuda.cpp`` torch adapter passes the host compiler's syntax and type checks.

Runs without a GPU: /usr/local/cuda provides the headers. Skipped only where nvcc (or, for the
adapters, a C++ compiler) is missing. The adapters include c10/cuda headers, which a CPU build
of torch ships without the one CMake generates (``c10/cuda/impl/cuda_cmake_macros.h``): the
test writes that one-line header itself, so the adapters are checked here too (the GPU
machine's ``BASTION_CUDA=1`` build links them). Sources include each other with quotes,
resolved next to the including file, so no ``-I csrc`` is needed.
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
ADAPTERS = sorted(CSRC.glob("*_cuda.cpp"))
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or "g++"
# nvcc may be a wrapper script elsewhere on PATH: the toolkit headers live under CUDA_HOME.
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
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


@pytest.mark.skipif(not (CUDA_INCLUDE / "cuda_runtime.h").is_file(), reason=f"no CUDA headers under {CUDA_INCLUDE}")
@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX})")
@pytest.mark.parametrize("source", ADAPTERS, ids=[p.name for p in ADAPTERS])
def test_cuda_adapter_passes_the_host_compiler(source, tmp_path):
    generated = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    generated.parent.mkdir(parents=True)
    generated.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [f"-I{p}" for p in (tmp_path, *TORCH_INCLUDES, CUDA_INCLUDE)]
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror=return-type", *includes, str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr[-4000:]}"


def test_there_are_cuda_adapters_to_check():
    assert ADAPTERS, f"no *_cuda.cpp files under {CSRC}"

