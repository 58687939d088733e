"""`longrl demo`: the whole recipe on the built-in tiny model, on one CPU, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)


def demo(
    out: Annotated[
        Path, typer.Option(help="Output folder (new, empty, or an earlier demo's: it continues).")
    ] = Path("longrl-demo"),
    quick: Annotated[
        bool, typer.Option(help="A small run (~2 min) that only shows every stage works.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the model, the data and training.")] = 0,
) -> None:
    """Synthetic long-video data -> tiny model -> CoT-SFT -> GRPO with MR-SP (2 processes) -> eval.

    Prints chance / after-SFT / after-RL accuracy per category with 95% intervals, writes the RL reward
    curve (PNG) and the trained model (HF folder) into OUT.
    """
    from longrl.demo.run import run_demo

    run_demo(out, quick=quick, seed=seed)
