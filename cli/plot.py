"""`longrl plot RUN`: reward curves of a training run as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def plot(
    run: Annotated[Path, typer.Argument(help="Training run folder (holds metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", help="PNG to write. Default: RUN/rewards.png.")] = None,
    keys: Annotated[
        str | None,
        typer.Option(
            "--keys",
            help="Comma-separated metrics to plot, one panel each. "
            "Default: reward, reward/accuracy, reward/format (those present), else loss.",
        ),
    ] = None,
    smoothing: Annotated[
        float, typer.Option(help="Exponential smoothing weight in [0, 1) for the bold curve (0 = raw).")
    ] = 0.8,
) -> None:
    """Plot a run's reward curves (raw and smoothed) against the step."""
    from longrl.train.plot import plot_run

    chosen = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    path = plot_run(run, out=out, keys=chosen or None, smoothing=smoothing)
    print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
