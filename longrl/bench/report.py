"""Printing and saving benchmark reports (a rich table on the console, JSON on disk)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

COLUMNS = (
    ("op", "op", None),
    ("impl", "impl", None),
    ("shape", "shape", None),
    ("dtype", "dtype", None),
    ("median_ms", "median ms", "{:.3f}"),
    ("gbps", "GB/s", "{:.1f}"),
    ("pct_copy_bw", "% copy", "{:.0f}%"),
    ("speedup", "speedup", "{:.2f}x"),
    ("peak_mem_mb", "peak MB", "{:.1f}"),
    ("note", "note", None),
)


def _cell(value: object, fmt: str | None) -> str:
    if value is None or value == "":
        return "-"
    return fmt.format(value) if fmt else str(value)


def print_report(report: dict, console: Console | None = None) -> None:
    """Print the report's rows as a table, headed by device, date and the measured copy bandwidth."""
    if console is None:
        # Piped or logged output has no terminal width: use a wide table instead of folding every cell.
        console = Console()
        if not console.is_terminal:
            console = Console(width=220)
    title = f"{report['benchmark']} on {report['device_name']} ({report['date']})"
    if report.get("copy_gbps"):
        title += f" - copy bandwidth {report['copy_gbps']:.1f} GB/s"
    table = Table(title=title)
    for _, header, _ in COLUMNS:
        table.add_column(header, overflow="fold")
    for row in report["rows"]:
        table.add_row(*(_cell(row.get(key), fmt) for key, _, fmt in COLUMNS))
    console.print(table)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
