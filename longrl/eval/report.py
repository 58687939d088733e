"""The tables and the plot of an eval: rows overall / per category / per duration bucket, one column per
frame setting, cells "accuracy [95% interval] (n)"; a PNG of accuracy versus frames per category."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from longrl.atomic import write_text_atomic


def cell_text(cell: dict[str, Any] | None) -> str:
    """ "61.2 [58.1, 64.3] (500)": accuracy in %, its Wilson 95% interval, scored items; "-" for none.

    The interval is written out rather than as ± because Wilson intervals are asymmetric near 0 % and 100 %,
    which is where small categories land (2 of 2 right: [34.2, 100.0])."""
    if not cell or cell.get("accuracy") is None:
        return "-"
    lo, hi = cell["ci95"]
    return f"{100 * cell['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({cell['n']})"


def table_rows(metrics: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(column labels = frame settings, [(row label, cells)]) for the markdown and console tables.

    Rows: overall, each category, each duration bucket (with a scored item in some setting), then the
    format-compliance rate and the count of items whose video failed."""
    settings = metrics["settings"]
    by_setting = [metrics["by_setting"][s] for s in settings]
    categories = list(dict.fromkeys(c for m in by_setting for c in m["per_category"]))
    buckets = list(dict.fromkeys(b for m in by_setting for b in m["per_duration"]))
    rows = [("overall", [cell_text(m) for m in by_setting])]
    rows += [
        (f"category: {c}", [cell_text(m["per_category"].get(c)) for m in by_setting]) for c in categories
    ]
    rows += [(f"duration: {b}", [cell_text(m["per_duration"].get(b)) for m in by_setting]) for b in buckets]
    # A category or bucket holding only failed videos has nothing to show; the errors row counts them.
    rows = rows[:1] + [(label, cells) for label, cells in rows[1:] if any(c != "-" for c in cells)]
    rows.append(("format compliance", [_percent(m.get("format_rate")) for m in by_setting]))
    rows.append(("video errors", [str(m["errors"]) for m in by_setting]))
    return list(settings), rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_report(metrics: dict[str, Any]) -> str:
    """report.md: what was run, the table, and how to read it."""
    columns, rows = table_rows(metrics)
    load = metrics["load"]
    lines = [
        f"# Eval: {metrics['benchmark']}",
        "",
        f"- model: `{metrics['model']}`",
        f"- data: `{metrics['data']}`: {load['kept']} of {load['total']} rows usable"
        + (f", {metrics['bad_rows']} bad rows skipped" if metrics["bad_rows"] else "")
        + (f"; {metrics['items']} evaluated (--limit)" if metrics["items"] < load["kept"] else ""),
        f"- samples per question: {metrics['samples']}, temperature {metrics['temperature']:g}"
        + (
            f", subtitles ({metrics['missing_subtitles']} videos without)" if metrics.get("subtitles") else ""
        ),
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    lines += [
        "",
        "Cells: accuracy in % [Wilson 95% interval] (items scored). Items whose video could not be decoded "
        "are not scored; they are counted in the last row.",
    ]
    if metrics["samples"] > 1:
        lines.append(
            f"Accuracy is the mean over {metrics['samples']} samples per question; pass@k is in metrics.json."
        )
    return "\n".join(lines) + "\n"


def write_markdown(metrics: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, markdown_report(metrics))


def _frames_axis(settings: list[str]) -> list[float] | None:
    """The frame counts of settings named frames_N, or None when any setting is an fps rule."""
    if not all(s.startswith("frames_") for s in settings):
        return None
    return [float(s.removeprefix("frames_")) for s in settings]


def plot_accuracy(metrics: dict[str, Any], path: Path) -> None:
    """PNG of accuracy (%) versus frames, one line per category and a thick one overall (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = metrics["settings"]
    by_setting = [metrics["by_setting"][s] for s in settings]
    frames = _frames_axis(settings)
    xs = frames if frames is not None else list(range(len(settings)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    categories = list(dict.fromkeys(c for m in by_setting for c in m["per_category"]))
    for category in categories:
        ys = [_acc(m["per_category"].get(category)) for m in by_setting]
        if not all(math.isnan(y) for y in ys):
            ax.plot(xs, ys, marker="o", linewidth=1, label=category)
    ax.plot(xs, [_acc(m) for m in by_setting], marker="s", linewidth=3, color="black", label="overall")
    if frames is not None:
        if len(xs) > 1 and min(xs) > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("frames")
    else:
        ax.set_xticks(xs, settings)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{metrics['benchmark']}: accuracy vs frames")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _acc(cell: dict[str, Any] | None) -> float:
    return float("nan") if not cell or cell.get("accuracy") is None else 100 * cell["accuracy"]
