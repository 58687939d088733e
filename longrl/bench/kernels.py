"""`longrl bench kernels`: every op against its plain-torch baseline, with the copy bandwidth as yardstick."""

from __future__ import annotations

import datetime
import importlib
import platform

import torch

from longrl.bench.harness import BenchRow, copy_bandwidth_gbps

# Bench group name -> module in longrl.bench exposing run(device, quick, copy_gbps) -> list[BenchRow].
GROUPS = {
    "pad_and_shard": "kernels_pad_shard",
    "attention": "kernels_attention",
    "embedding_cache": "kernels_cache",
    "logprobs": "kernels_logprobs",
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


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
        "benchmark": "kernels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "quick": quick,
        "copy_gbps": copy_gbps,
        "rows": [r.to_dict() for r in rows],
    }
