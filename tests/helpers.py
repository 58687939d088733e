"""Shared test utilities: device skips, output poisoning, tolerances."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Tolerances for comparing a kernel against its float32/float64 torch reference, by input dtype.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill `t` with a value no correct kernel writes (NaN for floats, a sentinel for ints), in place."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(-987654321 if t.dtype in (torch.int64, torch.int32) else 123)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as `t` in a non-contiguous view (every other element of a doubled last dim)."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() or t.numel() <= 1
    return view


# nvcc compiles the CUDA sources in every CI run even though no GPU is there.
NVCC: str | None = shutil.which("nvcc") or next(
    (p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None
)


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `longrl ARGS...` as users do (a fresh process through the console entry point), capturing output."""
    code = "import sys; from longrl.cli.app import main; sys.argv[0] = 'longrl'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def run_cli_here(capsys, *args: str) -> tuple[int, str]:
    """Run `longrl ARGS...` in this process through the console entry point (faster than `run_cli`):
    (exit code, stderr). capsys: pytest's fixture, emptied first."""
    from longrl.cli.app import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["longrl", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
    return exit_info.value.code, capsys.readouterr().err
