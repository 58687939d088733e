"""`longrl demo --quick` end to end: every stage runs and writes what the README promises."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from longrl.demo.plan import FULL, QUICK
from longrl.demo.run import check_out_dir, run_demo
from longrl.errors import ConfigError


def test_plans_are_consistent():
    for plan in (FULL, QUICK):
        assert plan.rl_group >= 2  # GRPO's advantages need groups
        assert plan.frames % 2 == 0 and plan.frames <= plan.video_frames
    assert FULL.eval_questions >= 1000  # about +-3 points of 95% interval


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not written by `longrl demo`"):
        check_out_dir(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_from_another_demo_version_is_refused(tmp_path):
    """A marker without this plan's sizes (an older `longrl demo`, e.g. with lookup questions and an
    uncalibrated model) is not continued: one clear error before any stage runs, nothing in it touched."""
    marker = json.dumps({"plan": "quick", "seed": 0, "complete": True})
    (tmp_path / "demo.json").write_text(marker)
    with pytest.raises(ConfigError, match="another version of `longrl demo`"):
        run_demo(tmp_path, quick=True)
    assert (tmp_path / "demo.json").read_text() == marker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--out", str(out), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text())
    assert summary["complete"] and summary["plan"] == "quick"
    for key in ("after_sft", "after_rl"):
        assert summary[key]["n"] == QUICK.eval_questions
        assert 0.0 <= summary[key]["accuracy"] <= 1.0
    assert (out / "model" / "config.json").is_file()
    # The base model's vision projector was calibrated (and whitened) on the SFT videos (models.calibrate has
    # the math's test).
    calibration = json.loads((out / "base_model" / "calibrate.json").read_text())
    assert calibration["videos"] == min(QUICK.calibration_videos, QUICK.sft_videos)
    assert QUICK.calibration_whiten is not None and calibration["whiten"] == QUICK.calibration_whiten
    assert calibration["top_share_after"] < calibration["top_share_before"]
    # The questions are the ordinal style (about the first and the last object), all four of them.
    eval_rows = (out / "data" / "eval" / "sft.jsonl").read_text().splitlines()
    asked = {json.loads(line)["problem"].split("\n")[0] for line in eval_rows}
    assert asked == {
        "Which object appeared first?",
        "Where did the first object appear?",
        "Which object appeared last?",
        "Where is the last object heading?",
    }
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rl_metrics = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rl_metrics] == list(range(1, QUICK.rl_steps + 1))
    assert "after GRPO" in result.stdout and "chance" in result.stdout
    # A second run finds everything done and reprints the same table.
    again = run_cli("demo", "--quick", "--out", str(out), cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "demo.json").read_text())["after_rl"] == summary["after_rl"]
    # A different plan in the same folder is refused in one line.
    other = run_cli("demo", "--out", str(out), cwd=tmp_path, timeout=120)
    assert other.returncode == 2 and "same --quick/--seed" in other.stderr
