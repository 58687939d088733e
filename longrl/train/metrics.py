"""Per-step metrics: run_dir/metrics.jsonl, optional TensorBoard, a console row; section timers; progress bar.

metrics.jsonl holds one JSON object per logged step: {"step": int, "time": unix seconds, **metrics}, numbers
only (tensors and numpy scalars become numbers; None/NaN/inf become null: the file is strict JSON). Only rank 0
logs (`enabled=False` elsewhere makes every method a no-op). On resume, `truncate_after(step)` drops the lines
of steps after the checkpoint so the file matches the run that continues.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from longrl.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_MISSING = "--tensorboard needs the tensorboard package: pip install tensorboard"


def _number(value: Any) -> float | int | None:
    """A JSON-able number from a python/numpy/torch scalar; None for None, NaN and inf."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def format_value(value: float | int | None) -> str:
    """Compact console text of a metric: 4 significant digits, "nan" for a missing (non-finite) value."""
    if value is None:
        return "nan"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def format_row(
    step: int, metrics: Mapping[str, Any], keys: Sequence[str] | None = None, total_steps: int | None = None
) -> str:
    """One console line: "step 3/100  reward 0.5  kl 0.0012 ...".

    keys: which metrics to show, in order (absent ones are skipped); None = all, in the mapping's order.
    """
    shown = list(metrics) if keys is None else [k for k in keys if k in metrics]
    head = f"step {step}/{total_steps}" if total_steps else f"step {step}"
    return "  ".join([head, *(f"{k} {format_value(_number(metrics[k]))}" for k in shown)])


class MetricsLogger:
    """Writes each step's metrics to run_dir/metrics.jsonl (flushed per line), TensorBoard and the console.

    enabled: False on every rank but 0 (then nothing is written or printed). tensorboard: also write scalars
    under run_dir/tensorboard (ConfigError on every rank when the package is missing). console_keys: the
    metrics the console row shows (None = all). total_steps: shown as "step k/N".
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool,
        tensorboard: bool = False,
        console: bool = True,
        total_steps: int | None = None,
        console_keys: Sequence[str] | None = None,
    ) -> None:
        if tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(TENSORBOARD_MISSING)
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.console = console
        self.total_steps = total_steps
        self.console_keys = list(console_keys) if console_keys is not None else None
        self._file = None
        self._writer = None
        self._console = Console(highlight=False)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append {"step", "time", **metrics} to metrics.jsonl, write TensorBoard scalars, print the row."""
        if not self.enabled:
            return
        values = {str(k): _number(v) for k, v in metrics.items()}
        record = {"step": int(step), "time": time.time(), **values}
        if self._file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed by close()
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self.tensorboard:
            writer = self._tensorboard_writer()
            for key, value in values.items():
                if value is not None:
                    writer.add_scalar(key, value, int(step))
            writer.flush()
        if self.console:
            row = format_row(step, values, self.console_keys, self.total_steps)
            self._console.print(row, markup=False, soft_wrap=True)

    def truncate_after(self, step: int) -> None:
        """Drop metrics.jsonl lines whose step is greater than `step` (and unreadable lines, e.g. a line cut
        by a kill), atomically. Used when resuming from the checkpoint of `step`."""
        if not self.enabled or not self.path.exists():
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        fd, tmp = tempfile.mkstemp(prefix=f".{METRICS_FILE}.", suffix=".tmp", dir=self.run_dir)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Flush and close metrics.jsonl and the TensorBoard writer (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tensorboard_writer(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(TENSORBOARD_MISSING) from None
            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        return self._writer


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order; unreadable lines (a line cut by a kill) are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class StepTimer:
    """Wall-clock seconds per named section, accumulated until `reset()`.

    `with timer.section("rollout"): ...`; `timer.totals()` -> {"time/rollout": seconds, ...}.
    sync_cuda: synchronize the GPU at each section's start and end, so asynchronous kernels are counted in
    the section that launched them (costs a little overlap; off by default).
    """

    def __init__(self, *, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda
        self._totals: dict[str, float] = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._totals[name] = self._totals.get(name, 0.0) + time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        """{"time/<section>": seconds} of every section timed since the last reset, in first-use order."""
        return {f"time/{name}": seconds for name, seconds in self._totals.items()}

    def reset(self) -> None:
        self._totals.clear()

    def _sync(self) -> None:
        if self.sync_cuda:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()


class _NoProgress:
    """What `progress` returns when disabled: accepts the same calls and shows nothing."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None


class _RichProgress:
    def __init__(self, total: int | None, description: str, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)


def progress(total: int | None, description: str, enabled: bool) -> _RichProgress | _NoProgress:
    """A progress bar context with `.advance(n=1)`; a silent stand-in when disabled or stdout is no terminal
    (logs and CI get the per-step rows only)."""
    console = Console()
    if not enabled or not console.is_terminal:
        return _NoProgress()
    return _RichProgress(total, description, console)
