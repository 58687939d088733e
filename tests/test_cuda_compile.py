"""Every CUDA kernel compiles with nvcc for sm_80 and sm_90, on every CI run, GPU or not.

The .cu files must stay free of torch headers (raw pointers only) so this works without a CUDA build of torch.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import NVCC

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ("80", "90")


def test_there_are_cuda_kernels() -> None:
    assert CU_FILES, "csrc/cuda/*.cu not found"


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_has_no_torch_headers(cu: Path) -> None:
    includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', cu.read_text())
    torch_like = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")]
    assert not torch_like, f"{cu.name} includes torch headers {torch_like}; keep kernels torch-free"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_for_sm80_and_sm90(cu: Path, tmp_path: Path) -> None:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [NVCC, "-c", "-std=c++17", "-O2", "--expt-relaxed-constexpr", "-Werror", "all-warnings",
           "-I", str(ROOT / "csrc"), *gencode, str(cu), "-o", str(tmp_path / (cu.stem + ".o"))]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc failed for {cu.name}:\n{result.stderr}"


# The thin bindings (csrc/cuda_bind) include torch's c10/cuda headers, which ship with every torch wheel; only
# one CMake-generated header is missing from a CPU wheel. A syntax-only compile against those headers checks the
# binding code (types, at::cuda calls, launcher signatures) on every CI run without a CUDA build of torch.
BIND_FILES = sorted((ROOT / "csrc" / "cuda_bind").glob("*.cpp"))
GXX = shutil.which("g++")


def _cuda_include_dir() -> Path | None:
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"))]
    if NVCC:
        candidates.append(str(Path(NVCC).resolve().parent.parent))
    for base in candidates:
        if base and (Path(base) / "include" / "cuda_runtime.h").is_file():
            return Path(base) / "include"
    return None


@pytest.mark.skipif(
    GXX is None or _cuda_include_dir() is None, reason="needs g++ and the CUDA runtime headers"
)
@pytest.mark.parametrize("binding", BIND_FILES, ids=lambda p: p.name)
def test_cuda_binding_compiles_against_torch_cuda_headers(binding: Path, tmp_path: Path) -> None:
    import torch
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [GXX, "-fsyntax-only", "-std=c++20", "-Wall", "-Werror", "-Wno-unused-parameter",
           "-DLONGRL_WITH_CUDA=1", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           "-I", str(ROOT / "csrc"), *[f"-isystem{p}" for p in include_paths()],
           f"-isystem{_cuda_include_dir()}", f"-isystem{tmp_path}", str(binding)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{binding.name} does not compile:\n{result.stderr[-4000:]}"
