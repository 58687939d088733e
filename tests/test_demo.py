"""`longrl demo --quick` end to end: every stage runs and writes what the README promises."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from longrl.demo.plan import FULL, QUICK
from longrl.demo.report import DemoReport, paired_gain
from longrl.demo.run import check_out_dir, run_demo
from longrl.errors import ConfigError
from longrl.eval.scoring import wilson_interval


def test_plans_are_consistent():
    for plan in (FULL, QUICK):
        assert plan.rl_group >= 2  # GRPO's advantages need groups
        assert plan.frames % 2 == 0 and plan.frames <= plan.video_frames
    assert FULL.eval_questions >= 1000  # about +-3 points of 95% interval


def _metrics(correct: int, n: int) -> dict:
    return {"n": n, "accuracy": correct / n, "ci95": list(wilson_interval(correct, n)), "per_category": {}}


def test_the_report_gives_the_paired_gain_next_to_the_intervals():
    """60 -> 70 of 100 with every change a fix: the two Wilson intervals overlap, the paired gain's interval
    (+10 points +- 1.96 * sqrt(0.09 * 100 / 99) / 10 = +-5.9) does not reach zero."""
    before = {f"q{i}": {"accuracy": float(i < 60)} for i in range(100)}
    after = {f"q{i}": {"accuracy": float(i < 70)} for i in range(100)}
    after["only-after"] = {"accuracy": 1.0}  # scored once: not paired
    gain = paired_gain(before, after)
    assert gain["n"] == 100 and gain["mean"] == pytest.approx(0.1)
    assert gain["ci95"] == pytest.approx([0.1 - 0.0591, 0.1 + 0.0591], abs=1e-4)
    report = DemoReport(
        plan=FULL, seed=0, chance=0.25, after_sft=_metrics(60, 100), after_rl=_metrics(70, 100), gain=gain
    )
    assert report.verdict() == {"sft_above_chance": True, "rl_above_sft": False, "rl_gain_above_zero": True}
    assert "+10.0 points [+4.1, +15.9] (paired 95% CI, n=100)" in report.markdown()
    assert report.to_dict()["rl_minus_sft"] == gain
    # No answer changed: no interval to speak of; fewer than 2 shared questions: no gain at all.
    same = paired_gain(before, before)
    assert same["ci95"] == [0.0, 0.0]
    report.gain = same
    assert "+0.0 points, the same on every question (n=100): no interval" in report.markdown()
    assert paired_gain({"q0": {"accuracy": 1.0}}, after) is None


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
    assert summary["rl_minus_sft"]["n"] == QUICK.eval_questions
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
    # PPO-ptx on the SFT rows: its loss is logged with every GRPO update (a step whose groups were all
    # dropped takes none).
    updated = [m for m in rl_metrics if m["updates"] > 0]
    assert QUICK.rl_ptx_coef > 0 and updated and all(m["ptx_loss"] > 0 for m in updated)
    assert "after GRPO" in result.stdout and "chance" in result.stdout and "RL minus SFT" in result.stdout
    # A second run finds everything done and reprints the same table.
    again = run_cli("demo", "--quick", "--out", str(out), cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "demo.json").read_text())["after_rl"] == summary["after_rl"]
    # A different plan in the same folder is refused in one line.
    other = run_cli("demo", "--out", str(out), cwd=tmp_path, timeout=120)
    assert other.returncode == 2 and "same --quick/--seed" in other.stderr
