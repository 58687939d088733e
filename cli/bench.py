"""`longrl bench ...`: microbenchmarks printed as a table and optionally written as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from longrl.errors import ConfigError

app = typer.Typer(help="Microbenchmarks (tables + JSON). Benchmarks measure; they never pass or fail.",
                  no_args_is_help=True)  # fmt: skip


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name}: not a device name ({err})") from None


@app.command("kernels")
def kernels(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON to this file.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes and few repetitions (seconds, not minutes).")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    only: Annotated[str | None, typer.Option(help="Comma-separated groups: pad_and_shard,attention,embedding_cache,logprobs.")] = None,
) -> None:  # fmt: skip
    """Every longrl op against its plain-torch baseline: median time, GB/s, % of copy bandwidth, peak memory."""
    from longrl.bench.kernels import GROUPS, run_kernel_benchmarks
    from longrl.bench.report import print_report, write_json

    groups = [g.strip() for g in only.split(",")] if only else None
    if groups and any(g not in GROUPS for g in groups):
        raise ConfigError(f"--only {only}: unknown group; choose from {', '.join(GROUPS)}")
    report = run_kernel_benchmarks(_device(device), quick=quick, groups=groups)
    print_report(report)
    if json_path is not None:
        write_json(report, json_path)
        print(f"wrote {json_path}")
