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
    from longrl.cli import bench, doctor, models, video

    doctor.register(app)
    from longrl.cli import demo as demo_cli

    demo_cli.register(app)
    from longrl.cli import eval as eval_cli

    eval_cli.register(app)
    from longrl.cli import plot as plot_cli

    plot_cli.register(app)
    from longrl.cli import generate as generate_cli

    generate_cli.register(app)
    from longrl.cli import train as train_cli

    train_cli.register(app)
    app.add_typer(bench.app, name="bench")
    app.add_typer(models.app, name="models")
    app.add_typer(video.app, name="video")


_register()


def main() -> None:
    """Console-script entry point.

    Usage mistakes (unknown command/option, missing argument) are reported by click itself with exit code 2;
    errors in the user's input found later (longrl.errors.LongRLError) become one line on stderr, exit code 2.
    """
    try:
        app()
    except LongRLError as err:
        _report(str(err))
        sys.exit(2)


def _report(message: str) -> None:
    """Print the one-line error, or, inside workers `longrl ... --nproc N` started, hand it to the launcher,
    which prints each distinct message once (N workers often meet the same mistake)."""
    import os

    from longrl.cli.launch import ERROR_FILE_ENV

    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            # One small O_APPEND write per message: lines from several workers do not interleave.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (" ".join(message.split()) + "\n").encode())
            finally:
                os.close(fd)
            return
        except OSError:
            pass
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    main()
