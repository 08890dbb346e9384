"""Every CUDA source compiles with the machine's nvcc for sm_80 and sm_90a (compile only), and
every ``*_cuda.cpp`` torch adapter passes the host compiler's syntax and type checks.

Runs without a GPU: /usr/local/cuda provides the headers. Skipped only where nvcc (or, for the
adapters, a C++ compiler) is missing. The adapters include c10/cuda headers, which a CPU build
of torch ships without the one CMake generates (``c10/cuda/impl/cuda_cmake_macros.h``): the
test writes that one-line header itself, so the adapters are checked here too (the GPU
machine's ``BASTION_CUDA=1`` build links them). Sources include each other with quotes,
resolved next to the including file, so no ``-I csrc`` is needed. Every compile starts at
once (one per core) when the module's first test asks, each test then reads its own result:
the compiles take a minute or more one after another on a 2-core CPU.
"""

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
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

HAVE_NVCC = Path(NVCC).is_file()
HAVE_HOST_COMPILER = (CUDA_INCLUDE / "cuda_runtime.h").is_file() and shutil.which(CXX) is not None
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason=f"nvcc not found ({NVCC})")
needs_host_compiler = pytest.mark.skipif(not HAVE_HOST_COMPILER,
                                         reason=f"needs CUDA headers under {CUDA_INCLUDE} and a C++ compiler ({CXX})")


def _nvcc_command(source: Path, arch: str, out_dir: Path) -> list[str]:
    includes = [f"-I{p}" for p in TORCH_INCLUDES]
    out = out_dir / f"{source.stem}-{arch}.o"
    return [NVCC, "-std=c++17", "-O3", "--fmad=false", "-gencode", ARCHS[arch], *includes, "-c", str(source), "-o", str(out)]


def _adapter_command(source: Path, generated_root: Path) -> list[str]:
    includes = [f"-I{p}" for p in (generated_root, *TORCH_INCLUDES, CUDA_INCLUDE)]
    return [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror=return-type", *includes, str(source)]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every compile this machine can run, started together: {(source name, arch or
    "host"): (command, CompletedProcess)}."""
    root = tmp_path_factory.mktemp("cuda_compile")
    generated = root / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    generated.parent.mkdir(parents=True)
    generated.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    commands = {}
    if HAVE_NVCC:
        commands.update({(s.name, arch): _nvcc_command(s, arch, root) for s in CU_FILES for arch in ARCHS})
    if HAVE_HOST_COMPILER:
        commands.update({(s.name, "host"): _adapter_command(s, root) for s in ADAPTERS})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = {key: pool.submit(subprocess.run, cmd, capture_output=True, text=True) for key, cmd in commands.items()}
        return {key: (commands[key], run.result()) for key, run in runs.items()}


def _assert_compiled(compiled, key) -> None:
    cmd, result = compiled[key]
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr[-4000:]}"


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cu_file_compiles(compiled, source, arch):
    _assert_compiled(compiled, (source.name, arch))


def test_there_are_cuda_sources_to_compile():
    assert CU_FILES, f"no .cu files under {CSRC}"


@needs_host_compiler
@pytest.mark.parametrize("source", ADAPTERS, ids=[p.name for p in ADAPTERS])
def test_cuda_adapter_passes_the_host_compiler(compiled, source):
    _assert_compiled(compiled, (source.name, "host"))


def test_there_are_cuda_adapters_to_check():
    assert ADAPTERS, f"no *_cuda.cpp files under {CSRC}"
