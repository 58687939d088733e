"""`longrl bench kernels`: every op against its plain-torch baseline, with the copy bandwidth as yardstick."""

from __future__ import annotations

import importlib

import torch

from longrl.bench.harness import BenchRow, copy_bandwidth_gbps, report_header

# Bench group name -> module in longrl.bench exposing run(device, quick, copy_gbps) -> list[BenchRow].
GROUPS = {
    "pad_and_shard": "kernels_pad_shard",
    "attention": "kernels_attention",
    "embedding_cache": "kernels_cache",
    "logprobs": "kernels_logprobs",
}


def run_kernel_benchmarks(device: torch.device, *, quick: bool, groups: list[str] | None = None) -> dict:
    """Run the selected groups (all by default) and return the report: metadata plus one row per measurement."""
    selected = groups or list(GROUPS)
    unknown = [g for g in selected if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown bench group(s) {unknown}; choose from {list(GROUPS)}")
    copy_gbps = copy_bandwidth_gbps(device, (64 << 20) if quick else (512 << 20))
    rows: list[BenchRow] = []
    for group in selected:
        module = importlib.import_module(f"longrl.bench.{GROUPS[group]}")
        rows.extend(module.run(device, quick, copy_gbps))
    return {
        **report_header("kernels", device, quick),
        "copy_gbps": copy_gbps,
        "rows": [r.to_dict() for r in rows],
    }
