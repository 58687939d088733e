"""The benchmark harness measures what it says; `longrl bench kernels` runs end to end and writes its JSON.

(Benchmarks never pass or fail on speed: these tests check the measuring, not the numbers.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from longrl.bench.harness import make_row, peak_memory_bytes, time_fn

CPU = torch.device("cpu")


def test_peak_memory_sees_a_repeated_allocation() -> None:
    # 16 MB, allocated and freed over and over: glibc would keep it resident after the first free and a naive
    # RSS high-water mark would read 0 from the second call on.
    n = 4_000_000
    # Allocating and freeing a larger mmapped block first is what raises glibc's threshold.
    torch.ones(6_000_000).sum()
    readings = [peak_memory_bytes(lambda: torch.ones(n).sum(), CPU) for _ in range(4)]
    for r in readings:
        assert r is not None and r >= 0.9 * n * 4, readings


def test_time_fn_returns_the_median_of_timed_runs() -> None:
    calls = []
    seconds = time_fn(lambda: calls.append(1), CPU, warmup=2, reps=5)
    assert len(calls) == 7 and 0 <= seconds < 1


def test_make_row_derives_bandwidth_and_speedup() -> None:
    row = make_row(
        "op", "cpp", "[4]", torch.float32, CPU, 0.5, bytes_moved=10**9, copy_gbps=4.0, baseline_seconds=1.0
    )
    assert (
        row.gbps == pytest.approx(2.0)
        and row.pct_copy_bw == pytest.approx(50.0)
        and row.speedup == pytest.approx(2.0)
    )
    assert row.median_ms == pytest.approx(500.0) and row.dtype == "float32"


def test_bench_kernels_quick_writes_json_with_every_group(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli("bench", "kernels", "--quick", "--device", "cpu", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["copy_gbps"] > 0
    ops = {row["op"] for row in report["rows"]}
    for expected in ("pad_and_shard", "unshard", "lse_merge", "cache_gather_packed", "token_logprobs fwd"):
        assert expected in ops, sorted(ops)
    assert all(row["median_ms"] > 0 for row in report["rows"])
    assert "pad_and_shard" in result.stdout  # the table is printed too
