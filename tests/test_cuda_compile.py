"""Every CUDA kernel compiles with nvcc for sm_80 and sm_90, on every CI run, GPU or not.

The .cu files must stay free of torch headers (raw pointers only) so this works without a CUDA build of torch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None)
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
