"""The package as users meet it: install layout, the compiled extension, the fallback without it, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli

import longrl
from longrl import _backend


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_extension_is_built_and_registers_ops() -> None:
    assert _backend.has_extension(), f"longrl._C failed to import: {_backend.C_IMPORT_ERROR}"
    for name in ("lse_merge_", "pad_and_shard", "unshard"):
        assert hasattr(torch.ops.longrl, name), f"torch.ops.longrl.{name} is not registered"


def test_cli_and_kernels_install_inside_the_package(tmp_path: Path) -> None:
    # From outside the repo, nothing generic is importable at top level; both live under longrl.
    result = _run_python(
        "import importlib.util as u, longrl.cli, longrl.kernels;"
        "print(u.find_spec('cli') is None, u.find_spec('kernels') is None)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


FALLBACK_SCRIPT = r"""
import sys, warnings
sys.modules["longrl._C"] = None  # as in a source checkout that was never built
import torch
from longrl import ops, _backend
from longrl._ops import lse_merge as lm
assert not _backend.has_extension()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out, lse = torch.zeros(2, 3, 4), torch.full((2, 3), float("-inf"))
    bo, bl = torch.randn(2, 3, 4), torch.randn(2, 3)
    ops.lse_merge_(out, lse, bo, bl)
    ops.lse_merge_(out, lse, bo, bl)
    x = torch.arange(10).view(1, 10)
    shard, spec = ops.pad_and_shard(x, sp_size=2, rank=0, dim=1)
    back = ops.unshard([ops.pad_and_shard(x, sp_size=2, rank=r, dim=1)[0] for r in range(2)], spec)
ours = [w for w in caught if "longrl._C" in str(w.message)]
ref_out, ref_lse = lm.reference(bo, bl, bo, bl)
assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(lse, ref_lse, atol=1e-6)
assert torch.equal(back, x)
print(len(ours), ops.backend_table()["lse_merge"]["cpu"], ops.backend_table()["pad_and_shard"]["cpu"])
"""


def test_without_extension_ops_fall_back_to_torch_with_one_warning(tmp_path: Path) -> None:
    result = _run_python(FALLBACK_SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "torch", "torch"]


def test_doctor_reports_versions_devices_and_backends(tmp_path: Path) -> None:
    result = run_cli("doctor", "--json", str(tmp_path / "doctor.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["torch"] == torch.__version__
    assert report["longrl"] == longrl.__version__
    assert report["extension"]["built"] is True
    assert report["op_backends"]["pad_and_shard"]["cpu"] == "cpp"
    assert report["op_backends"]["lse_merge"]["cpu"] == "cpp"
    assert "longrl._C: built" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_on_missing_cuda_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run_cli("bench", "kernels", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no CUDA device" in result.stderr


def test_bench_unknown_group_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("bench", "kernels", "--only", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown group" in result.stderr


def test_unknown_backend_is_a_clear_error() -> None:
    from longrl import ops
    from longrl.errors import BackendError

    with pytest.raises(BackendError, match="unknown backend"):
        ops.lse_merge(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), backend="nope")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="not available"):
            ops.lse_merge(
                torch.zeros(1, 2), torch.zeros(1), torch.zeros(1, 2), torch.zeros(1), backend="cuda"
            )


@pytest.mark.parametrize(
    "args", [["no-such-command"], ["models", "make-tiny"], ["bench", "kernels", "--no-such-flag"]], ids=str
)
def test_cli_usage_errors_exit_2_without_traceback(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Error" in result.stderr
