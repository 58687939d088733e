"""`longrl doctor`: versions, devices, the compiled extension and which backend each op uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def doctor(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """Print versions, devices, whether longrl._C is built (and with CUDA), and each op's backend."""
    from longrl.doctor import collect

    report = collect()
    console = Console()
    console.print(f"[bold]longrl[/] {report['longrl']}  python {report['python']}  torch {report['torch']}"
                  f" (CUDA {report['torch_cuda'] or 'none'})")  # fmt: skip
    console.print(f"platform: {report['platform']}")
    console.print("packages: " + ", ".join(f"{k} {v}" for k, v in report["packages"].items()))
    console.print(f"nvcc: {report['nvcc'] or 'not found'}")
    if report["cuda_devices"]:
        for d in report["cuda_devices"]:
            console.print(f"cuda:{d['index']}: {d['name']} (sm_{d['capability'].replace('.', '')})")
    else:
        console.print("cuda devices: none")
    ext = report["extension"]
    if ext["built"]:
        console.print(f"longrl._C: built, CUDA kernels: {'yes' if ext['with_cuda'] else 'no'}")
    else:
        console.print(f"longrl._C: [yellow]not built[/] ({ext['error']}); ops use their torch reference")
    table = Table(title="op backends (what backend='auto' picks)")
    table.add_column("op")
    table.add_column("cpu")
    table.add_column("cuda")
    for op, per_device in report["op_backends"].items():
        table.add_row(op, per_device.get("cpu", "-"), per_device.get("cuda", "-"))
    console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
