"""Build of ``bastion_ext._C``: setuptools drives CMakeLists.txt (the one build description).

Environment switches:

- ``BASTION_CUDA=auto|0|1``: build the CUDA sources. ``auto`` (default) builds them iff the
  installed torch has CUDA (``torch.version.cuda``) and ``nvcc`` is found.
- ``BASTION_CUDA_ARCHS``: CUDA architectures, default ``"80;90a"`` (passed to torch as
  ``TORCH_CUDA_ARCH_LIST=8.0;9.0a``).
- ``MAX_JOBS``: parallel compile jobs, default the number of CPUs.
- ``BASTION_BUILD_TYPE``: CMake build type, default ``Release``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _want_cuda() -> bool:
    """Resolve ``BASTION_CUDA`` to a yes/no, naming the variable when its value is bad."""
    import torch

    mode = os.environ.get("BASTION_CUDA", "auto").strip().lower()
    if mode in ("1", "on", "yes", "true"):
        return True
    if mode in ("0", "off", "no", "false"):
        return False
    if mode != "auto":
        raise ValueError(f"BASTION_CUDA must be auto, 0 or 1, got {mode!r}")
    return torch.version.cuda is not None and _find_nvcc() is not None


def _find_nvcc() -> str | None:
    """nvcc from CUDACXX, CUDA_HOME, PATH or /usr/local/cuda, in that order."""
    candidates = [os.environ.get("CUDACXX")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(str(Path(cuda_home) / "bin" / "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _cuda_root(nvcc: str) -> str:
    """The toolkit root for torch's FindCUDA: CUDA_HOME, else nvcc's parent if it holds the
    headers (``/usr/local/bin/nvcc`` may be a wrapper script), else ``/usr/local/cuda``."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    root = Path(nvcc).resolve().parent.parent
    return str(root) if (root / "include" / "cuda.h").is_file() else "/usr/local/cuda"


class CMakeExtension(Extension):
    """An extension whose sources CMake, not setuptools, knows about."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build with CMake + Ninja; the .so lands where setuptools expects it."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11
        import torch

        # For editable installs get_ext_fullpath points into the source package dir.
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A fixed build dir (not pip's throwaway temp) keeps rebuilds incremental.
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = _want_cuda()
        args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            "-GNinja",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('BASTION_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DBASTION_OUTPUT_DIR={out_dir}",
            f"-DBASTION_MODULE_SUFFIX={self.get_ext_filename('x')[1:]}",
            f"-DBASTION_CUDA={'ON' if cuda else 'OFF'}",
        ]
        if cuda:
            # Torch's CMake config ignores CMAKE_CUDA_ARCHITECTURES and adds gencode flags for
            # TORCH_CUDA_ARCH_LIST (default: every arch it knows, some of which nvcc 13 rejects).
            archs = os.environ.get("BASTION_CUDA_ARCHS", "80;90a").split(";")
            args.append("-DTORCH_CUDA_ARCH_LIST=" + ";".join(f"{a[0]}.{a[1:]}" for a in archs))
            nvcc = _find_nvcc()
            if nvcc:
                args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
                args.append(f"-DCUDA_TOOLKIT_ROOT_DIR={_cuda_root(nvcc)}")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


# bastion_ext at the top level; the engine package bastion lives under python/.
ENGINE_PACKAGES = ["bastion"] + [f"bastion.{p}" for p in find_packages(str(ROOT / "python" / "bastion"))]

setup(
    packages=find_packages(include=["bastion_ext", "bastion_ext.*"]) + ENGINE_PACKAGES,
    package_dir={"bastion": "python/bastion"},
    ext_modules=[CMakeExtension("bastion_ext._C")],
    cmdclass={"build_ext": CMakeBuild},
)
