"""`longrl eval` end to end with the tiny model on real (tiny) videos: a frames sweep, a run cut short by
--limit then resumed, a predictions file cut mid-line (a killed run) then resumed, a bad row and an
undecodable video counted, and the metrics / report checked against a re-scoring of the written responses
with the RL reward's parser (the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli
from videos import write_undecodable, write_video

from longrl.errors import ConfigError
from longrl.eval.runner import EvalConfig, run_eval
from longrl.eval.scoring import wilson_interval
from longrl.models import make_tiny
from longrl.rl.rewards import RewardConfig, accuracy_reward, format_reward

GOOD = 6  # rows with a usable video; plus one undecodable video, one row without options, one missing video


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_run")
    make_tiny(root / "tiny")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 24, 8)
    write_video(videos / "b.mp4", 40, 8)
    write_undecodable(videos / "a.mp4", videos / "broken.mp4")
    rows = [
        {"id": f"q{i}", "question": f"What is shown in part {i}?", "options": ["red", "green", "blue"],
         "answer": "ABC"[i % 3], "video": ["a.mp4", "b.mp4"][i % 2], "category": ["temporal", "spatial"][i % 2]}
        for i in range(GOOD)
    ]  # fmt: skip
    rows.insert(2, {"id": "no_options", "question": "Free?", "answer": "x", "video": "a.mp4"})
    rows.insert(
        3, {"id": "broken", "question": "What?", "options": ["x", "y"], "answer": "A", "video": "broken.mp4"}
    )
    rows.append(
        {"id": "gone", "question": "What?", "options": ["x", "y"], "answer": "A", "video": "gone.mp4"}
    )
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _args(root: Path, out: str, *extra: str) -> list[str]:
    return [
        "eval", "--model", str(root / "tiny"), "--benchmark", "mc", "--data", str(root / "mc.jsonl"),
        "--video-root", str(root / "videos"), "--out", str(root / out), "--frames", "4,8",
        "--max-new-tokens", "10", "--batch-size", "2", "--no-require-answer-tag", *extra,
    ]  # fmt: skip


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_scores(records: list[dict]) -> None:
    """Every record's verdicts equal the RL reward's on its own response (the reference)."""
    config = RewardConfig(require_answer_tag=False)
    for r in records:
        if r["error"]:
            continue
        options = ["red", "green", "blue"]
        assert r["correct"] == [
            accuracy_reward(t, r["gold"], options, config=config) == 1.0 for t in r["responses"]
        ]
        assert r["format_ok"] == [format_reward(t) == 1.0 for t in r["responses"]]


def test_sweep_limit_then_resume_through_the_cli(bench: Path):
    first = run_cli(*_args(bench, "out", "--limit", "3"), cwd=bench)
    assert first.returncode == 0, first.stderr
    out = bench / "out"
    early = {s: (out / s / "predictions.jsonl").read_text() for s in ("frames_4", "frames_8")}
    assert [r["id"] for r in _records(out / "frames_4" / "predictions.jsonl")] == ["q0", "q1", "broken"]

    second = run_cli(*_args(bench, "out", "--plot"), cwd=bench)
    assert second.returncode == 0, second.stderr
    assert "frames_4" in second.stdout and "overall" in second.stdout
    for setting in ("frames_4", "frames_8"):
        text = (out / setting / "predictions.jsonl").read_text()
        records = _records(out / setting / "predictions.jsonl")
        ids = [r["id"] for r in records]
        assert sorted(ids) == sorted([f"q{i}" for i in range(GOOD)] + ["broken"])  # each once
        # The answered records of the first run are kept verbatim, not recomputed; the failed video is
        # retried (dropped from the file and answered again, failing again).
        kept = [line for line in early[setting].splitlines() if '"error": null' in line]
        assert text.splitlines()[: len(kept)] == kept
        assert all(r["frames"] == setting for r in records)
        broken = next(r for r in records if r["id"] == "broken")
        assert broken["error"] and broken["responses"] == [] and broken["accuracy"] is None
        _check_scores(records)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"] == ["frames_4", "frames_8"] and metrics["primary"] == "frames_8"
    assert metrics["bad_rows"] == 2
    assert metrics["load"]["skipped"]["too_few_options"] == 1
    assert metrics["load"]["skipped"]["video_missing"] == 1
    for setting in ("frames_4", "frames_8"):
        records = [r for r in _records(out / setting / "predictions.jsonl") if not r["error"]]
        m = metrics["by_setting"][setting]
        correct = sum(r["correct"][0] for r in records)
        assert (m["n"], m["errors"]) == (GOOD, 1)
        assert m["accuracy"] == pytest.approx(correct / GOOD)
        assert m["ci95"] == pytest.approx(list(wilson_interval(correct, GOOD)))
        spatial = [r for r in records if r["category"] == "spatial"]
        assert m["per_category"]["spatial"]["n"] == len(spatial) == 3
        assert m["per_category"]["spatial"]["accuracy"] == pytest.approx(
            sum(r["correct"][0] for r in spatial) / 3
        )
        # Videos of 3 s and 5 s: bucketed by the probed duration.
        assert m["per_duration"]["short"]["n"] == GOOD
        assert {r["duration_s"] for r in records} == {3.0, 5.0}
    assert metrics["accuracy"] == metrics["by_setting"]["frames_8"]["accuracy"]
    report = (out / "report.md").read_text()
    assert "| | frames_4 | frames_8 |" in report and "| category: spatial |" in report
    assert (out / "accuracy_vs_frames.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_run_resumes_without_duplicates(bench: Path):
    config = EvalConfig(
        model=bench / "tiny", benchmark="mc", data=bench / "mc.jsonl", video_root=bench / "videos",
        out=bench / "killed", frames=(4,), max_new_tokens=10, batch_size=4, require_answer_tag=False,
    )  # fmt: skip
    run_eval(config)
    path = bench / "killed" / "frames_4" / "predictions.jsonl"
    full = path.read_text().splitlines()
    # Killed while writing the 4th record: three complete lines and half of the next.
    path.write_text("\n".join(full[:3]) + "\n" + full[3][: len(full[3]) // 2])
    metrics = run_eval(config)
    again = path.read_text().splitlines()
    assert again[:3] == full[:3]
    by_id = {json.loads(line)["id"]: json.loads(line) for line in full}
    records = [json.loads(line) for line in again]
    assert len(records) == len(full) == len({r["id"] for r in records})
    for r in records:  # greedy: what was recomputed is what the first run wrote
        assert r == by_id[r["id"]]
    assert metrics["n"] == GOOD and metrics["errors"] == 1


def test_user_mistakes_exit_2_with_one_line(bench: Path):
    # A folder holding an eval of another config (as the CLI would have written it, max_new_tokens 99).
    prior = EvalConfig(model=bench / "tiny", benchmark="mc", data=bench / "mc.jsonl", video_root=bench / "videos",
                       out=bench / "prior", max_new_tokens=99, require_answer_tag=False)  # fmt: skip
    (bench / "prior").mkdir()
    (bench / "prior" / "eval_config.json").write_text(json.dumps(prior.identity()))
    run = run_cli(*_args(bench, "prior"), cwd=bench)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "different max_new_tokens" in run.stderr
    run = run_cli(*_args(bench, "other", "--frames", "4,x"), cwd=bench)
    assert run.returncode == 2 and "--frames" in run.stderr and "Traceback" not in run.stderr
    assert not (bench / "other").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"benchmark": "mvbench"}, "choose one of"),
        ({"frames": (4, 4)}, "distinct"),
        ({"frames": None, "fps": 1.0, "max_frames": 8}, None),
        ({"fps": 1.0}, "not both"),
        ({"frames": None, "fps": -1.0}, "fps"),
        ({"samples": 0}, "--samples"),
        ({"temperature": -1.0}, "temperature"),
        ({"subtitle_root": Path("subs")}, "--subtitles"),
        ({"subtitle_rule": "nearest"}, "--subtitle-rule"),
    ],
)
def test_config_check(bench: Path, changes: dict, message: str | None):
    config = EvalConfig(model=bench / "tiny", benchmark="mc", data=bench / "mc.jsonl", out=bench / "x")
    for key, value in changes.items():
        setattr(config, key, value)
    if message is None:
        config.check()
        assert [label for label, _ in config.settings()] == ["fps_1"]
        return
    with pytest.raises(ConfigError, match=message):
        config.check()


def test_a_folder_with_someone_elses_report_is_not_overwritten(bench: Path):
    theirs = bench / "theirs"
    theirs.mkdir()
    (theirs / "report.md").write_text("my notes")
    config = EvalConfig(model=bench / "tiny", benchmark="mc", data=bench / "mc.jsonl", video_root=bench / "videos",
                        out=theirs, frames=(4,))  # fmt: skip
    with pytest.raises(ConfigError, match="already has report.md"):
        run_eval(config)
    assert (theirs / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in theirs.iterdir()) == ["report.md"]
