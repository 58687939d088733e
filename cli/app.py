"""The `longrl` command line. Each command parses its flags and calls one library function."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from longrl.errors import LongRLError

app = typer.Typer(
    name="longrl",
    help="Reinforcement learning for video vision-language models on long videos (MR-SP, GRPO, CoT-SFT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _register() -> None:
    # Subcommand modules import the library lazily inside their functions, so `longrl --help` stays fast.
    from longrl.cli import bench, doctor, models

    doctor.register(app)
    app.add_typer(bench.app, name="bench")
    app.add_typer(models.app, name="models")


_register()


def main() -> None:
    """Console-script entry point: users' mistakes become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except LongRLError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
