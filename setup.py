"""Build longrl and its compiled extension `longrl._C` through CMake.

Environment switches (read here and passed to CMake):
  LONGRL_CUDA        auto (default) | 0 | 1   build the CUDA kernels (auto: when torch has CUDA and nvcc exists)
  LONGRL_CUDA_ARCHS  "80;90" (default)         CUDA architectures to compile for
  LONGRL_BUILD_DIR   build/cmake (default)     where CMake keeps its (incremental) build tree
  MAX_JOBS           number of parallel compile jobs
Torch must already be installed: install with `pip install --no-build-isolation -e .`.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            import torch
        except ImportError:
            sys.exit(
                "longrl: torch must be installed before building (pip install torch), and the package "
                "installed with --no-build-isolation so the build links against that torch."
            )
        out_file = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(os.environ.get("LONGRL_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        args = [
            "cmake",
            str(ROOT),
            "-G",
            "Ninja",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DLONGRL_OUTPUT_DIR={out_file.parent}",
            f"-DLONGRL_OUTPUT_NAME={out_file.name}",
            f"-DLONGRL_CUDA={os.environ.get('LONGRL_CUDA', 'auto')}",
            f"-DLONGRL_CUDA_ARCHS={os.environ.get('LONGRL_CUDA_ARCHS', '80;90')}",
        ]
        subprocess.run(args, cwd=build_dir, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


packages = (
    ["longrl"]
    + [f"longrl.{p}" for p in find_packages(str(ROOT / "longrl"))]
    + ["longrl.cli"]
    + [f"longrl.cli.{p}" for p in find_packages(str(ROOT / "cli"))]
    + ["longrl.kernels"]
    + [f"longrl.kernels.{p}" for p in find_packages(str(ROOT / "kernels"))]
)

setup(
    packages=packages,
    ext_modules=[CMakeExtension("longrl._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
