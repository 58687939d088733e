"""The report tables and plot from hand-made metrics (cells checked against hand-computed Wilson bounds)."""

from __future__ import annotations

from pathlib import Path

from longrl.eval.report import cell_text, markdown_report, plot_accuracy, table_rows
from longrl.eval.scoring import summarize


def _record(rid, category, duration, ok, error=None):
    return {"id": rid, "category": category, "duration": duration, "error": error,
            "correct": [] if error else [ok], "format_ok": [] if error else [True]}  # fmt: skip


def _metrics() -> dict:
    # frames_4: 3 of 5 right; frames_8: 4 of 5 right; one more item whose video failed (category "broken").
    four = [
        _record(str(i), "plot" if i < 3 else "goal", "short" if i < 4 else "long", i in (0, 1, 3))
        for i in range(5)
    ]
    eight = [
        _record(str(i), "plot" if i < 3 else "goal", "short" if i < 4 else "long", i != 2) for i in range(5)
    ]
    broken = _record("x", "broken", "unknown", False, error="cannot decode")
    by_setting = {"frames_4": summarize([*four, broken], 1), "frames_8": summarize([*eight, broken], 1)}
    return {
        "benchmark": "mc", "model": "/m", "data": "/d.jsonl", "samples": 1, "temperature": 0.0,
        "subtitles": False, "settings": ["frames_4", "frames_8"], "primary": "frames_8", "items": 6,
        "bad_rows": 1, "missing_subtitles": 0, "load": {"total": 7, "kept": 6}, "by_setting": by_setting,
        **by_setting["frames_8"],
    }  # fmt: skip


def test_cell_text_writes_the_wilson_interval():
    # 3/5: Wilson (0.2307, 0.8824) by hand: center 0.5566, half-width 0.3258.
    assert cell_text(_metrics()["by_setting"]["frames_4"]) == "60.0 [23.1, 88.2] (5)"
    assert cell_text(None) == "-"


def test_table_rows_and_markdown():
    columns, rows = table_rows(_metrics())
    assert columns == ["frames_4", "frames_8"]
    labels = [label for label, _ in rows]
    # "broken" and "unknown" hold only the failed video: no row of their own, counted as video errors.
    assert labels == ["overall", "category: goal", "category: plot", "duration: short", "duration: long",
                      "format compliance", "video errors"]  # fmt: skip
    assert dict(rows)["overall"][0] == "60.0 [23.1, 88.2] (5)"
    # By hand: 1/2 -> Wilson (0.0945, 0.9055); 2/2 -> (0.3424, 1.0).
    assert dict(rows)["category: goal"] == ["50.0 [9.5, 90.5] (2)", "100.0 [34.2, 100.0] (2)"]
    assert dict(rows)["video errors"] == ["1", "1"]
    assert dict(rows)["format compliance"] == ["100.0", "100.0"]
    text = markdown_report(_metrics())
    assert "| | frames_4 | frames_8 |" in text
    # 4/5 by hand: Wilson (0.3755, 0.9638).
    assert "| overall | 60.0 [23.1, 88.2] (5) | 80.0 [37.6, 96.4] (5) |" in text
    assert "1 bad rows skipped" in text


def test_plot_writes_a_png(tmp_path: Path):
    plot_accuracy(_metrics(), tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acc.png"]
