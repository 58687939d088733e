"""`longrl models ...`: model utilities (the tiny test model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Model utilities.", no_args_is_help=True)


@app.command("make-tiny")
def make_tiny(
    out: Annotated[
        Path, typer.Argument(help="Folder to write the HF model folder to (must be new or empty).")
    ],
    seed: Annotated[int, typer.Option(help="Seed for the random weights (same seed, same model).")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing non-empty folder.")
    ] = False,
) -> None:
    """Write a tiny random Qwen2.5-VL with a locally trained tokenizer as a normal HF folder (no hub access)."""
    from longrl.models import make_tiny as write_tiny

    path = write_tiny(out, seed=seed, overwrite=overwrite)
    print(f"wrote tiny Qwen2.5-VL to {path}")
