"""Reward curves of a training run as a PNG, from its metrics.jsonl (`longrl plot RUN`)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from longrl.errors import ConfigError
from longrl.train.metrics import METRICS_FILE, read_metrics

DEFAULT_KEYS = ("reward", "reward_mean", "reward/accuracy", "reward/format")
FALLBACK_KEYS = ("loss",)  # an SFT run has no reward


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing): weight 0 = raw, towards 1 = smoother.

    s_t = weight * s_{t-1} + (1 - weight) * v_t, divided by (1 - weight^t) so early points are not pulled
    towards 0. NaN values are passed through and do not enter the average.
    """
    out: list[float] = []
    running, count = 0.0, 0
    for value in values:
        if not math.isfinite(value):
            out.append(math.nan)
            continue
        count += 1
        running = weight * running + (1.0 - weight) * value
        out.append(running / (1.0 - weight**count))
    return out


def plot_run(
    run_dir: str | Path,
    out: Path | None = None,
    keys: Sequence[str] | None = None,
    *,
    smoothing: float = 0.8,
) -> Path:
    """Plot `keys` against step from run_dir/metrics.jsonl, raw (faint) and smoothed; one panel per key.

    keys: None = the reward keys present (reward, reward/accuracy, reward/format), else `loss`. out: the PNG
    path (default run_dir/rewards.png), written atomically. Returns the PNG path. Raises ConfigError (one
    line) when the run folder or its metrics are missing, or no requested key has any value.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"smoothing must be in [0, 1), got {smoothing}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir} has no {METRICS_FILE}; is it a training run folder?")
    records = [r for r in read_metrics(metrics_path) if isinstance(r.get("step"), int)]
    if not records:
        raise ConfigError(f"{metrics_path} has no metrics yet")
    present = [k for k in {k: None for r in records for k in r} if k not in ("step", "time")]
    if keys is None:
        chosen = [k for k in DEFAULT_KEYS if k in present] or [k for k in FALLBACK_KEYS if k in present]
        if not chosen:
            raise ConfigError(
                f"{metrics_path} has none of {', '.join(DEFAULT_KEYS + FALLBACK_KEYS)}; "
                f"choose with --keys (it has: {', '.join(present[:12])})"
            )
    else:
        unknown = [k for k in keys if k not in present]
        if unknown:
            raise ConfigError(
                f"{metrics_path} has no {', '.join(unknown)} (it has: {', '.join(present[:12])})"
            )
        chosen = list(keys)
    series = {}
    for key in chosen:
        # The last record of a step wins: a resumed run may have logged a step twice before truncation.
        by_step: dict[int, float] = {}
        for record in records:
            if key in record:
                value = record[key]
                by_step[record["step"]] = float(value) if isinstance(value, (int, float)) else math.nan
        steps = sorted(by_step)
        series[key] = (steps, [by_step[s] for s in steps])
    out = Path(out) if out is not None else run_dir / "rewards.png"
    _draw(series, out, title=run_dir.name, smoothing=smoothing)
    return out


def _draw(series: dict[str, tuple[list[int], list[float]]], out: Path, title: str, smoothing: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.6 * len(series)), sharex=True, squeeze=False)
    try:
        for ax, (key, (steps, values)) in zip(axes[:, 0], series.items(), strict=True):
            (raw,) = ax.plot(steps, values, alpha=0.3, linewidth=1, label="raw")
            ax.plot(steps, smooth(values, smoothing), color=raw.get_color(), linewidth=2, label="smoothed")
            ax.set_ylabel(key)
            ax.grid(True, alpha=0.3)
        axes[0, 0].set_title(title)
        axes[0, 0].legend(loc="best", fontsize="small")
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png", dpi=100)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
