"""ActivityNet-QA as released (MILVLG/activitynet-qa, dataset/): a split's questions and answers in two JSON
lists, `test_q.json` [{"video_name", "question", "question_id"}] and `test_a.json` [{"answer", "type",
"question_id"}], `video_name` the bare YouTube id and the videos stored as `v_<id>.mp4`. The files here are
written in that format (rows copied in shape from the release); the loader never decodes videos, so the
videos are placeholders. Reference: the hand-written expected items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from longrl.errors import DataError
from longrl.eval.loaders import load_benchmark

QUESTIONS = [
    {"video_name": "1QIUV7WYKXg", "question": "is the athlete wearing trousers", "question_id": "v_1QIUV7WYKXg_3"},
    {"video_name": "9eniCub7u60", "question": "what is the person doing", "question_id": "v_9eniCub7u60_0"},
    {"video_name": "X_K7Aa3Aa-E", "question": "where is the man", "question_id": "v_X_K7Aa3Aa-E_6"},
    {"video_name": "1QIUV7WYKXg", "question": "how many people are there", "question_id": "v_1QIUV7WYKXg_8"},
    {"video_name": "chmegNbBTNc", "question": "is it day or night in the video", "question_id": "v_chmegNbBTNc_9"},
    {"video_name": "gone0000000", "question": "what color is the ball", "question_id": "v_gone0000000_4"},
    {"video_name": "9eniCub7u60", "question": "what happens after the jump", "question_id": "v_9eniCub7u60_1"},
]  # fmt: skip
ANSWERS = [  # not in the questions' order, one question (v_9eniCub7u60_1) left without an answer
    {"answer": "yes", "type": 3, "question_id": "v_1QIUV7WYKXg_3"},
    {"answer": "day", "type": 8, "question_id": "v_chmegNbBTNc_9"},
    {"answer": "surfing", "type": 0, "question_id": "v_9eniCub7u60_0"},
    {"answer": "2", "type": 7, "question_id": "v_1QIUV7WYKXg_8"},
    {"answer": "on the left of the car", "type": 1, "question_id": "v_X_K7Aa3Aa-E_6"},
    {"answer": "red", "type": 4, "question_id": "v_gone0000000_4"},
]
EXPECTED = [  # (id, answer, category, video file)
    ("v_1QIUV7WYKXg_3", "yes", "yes/no", "v_1QIUV7WYKXg.mp4"),
    ("v_9eniCub7u60_0", "surfing", "motion", "v_9eniCub7u60.mkv"),
    ("v_X_K7Aa3Aa-E_6", "on the left of the car", "spatial relation", "X_K7Aa3Aa-E.mp4"),
    ("v_1QIUV7WYKXg_8", "2", "number", "v_1QIUV7WYKXg.mp4"),
    ("v_chmegNbBTNc_9", "day", "other", "v_chmegNbBTNc.webm"),
]


def _write(folder: Path, name: str, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(rows))  # the release: one JSON list per file
    return folder / name


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """test_q.json + test_a.json in data/, videos (v_<id> as released, one bare id) in videos/."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("v_1QIUV7WYKXg.mp4", "v_9eniCub7u60.mkv", "X_K7Aa3Aa-E.mp4", "v_chmegNbBTNc.webm"):
        (videos / name).write_bytes(b"not decoded by the loader")
    _write(tmp_path / "data", "test_q.json", QUESTIONS)
    _write(tmp_path / "data", "test_a.json", ANSWERS)
    return tmp_path


def _summary(items) -> list[tuple]:
    return [(it.id, it.example.answer, it.category, it.example.video_rel) for it in items]


def test_questions_file_is_joined_with_its_answers(split: Path):
    items, report, _ = load_benchmark("open-ended", split / "data" / "test_q.json", split / "videos")
    assert _summary(items) == EXPECTED  # in the questions file's order
    assert all(it.answer_kind == "open_ended" and not it.example.options for it in items)
    assert items[0].example.question == QUESTIONS[0]["question"]
    # gone0000000 has no video; v_9eniCub7u60_1 has no answer.
    assert dict(report.skipped) == {"video_missing": 1, "missing_field": 1}
    assert (report.total, report.kept) == (7, 5)
    assert any("v_9eniCub7u60_1" in bad.detail and "test_a.json" in bad.detail for bad in report.bad_rows)

    # The answers file as --data names the same split.
    again, _, _ = load_benchmark("open-ended", split / "data" / "test_a.json", split / "videos")
    assert _summary(again) == EXPECTED

    _write(split / "data", "two_q.json", [QUESTIONS[0], QUESTIONS[6]])
    _write(split / "data", "two_a.json", ANSWERS)
    with pytest.raises(DataError, match=r"two_q.json:row\[1\]: missing_field: .*v_9eniCub7u60_1.*no answer"):
        load_benchmark("open-ended", split / "data" / "two_q.json", split / "videos", on_bad_row="fail")


def test_a_joined_file_named_like_a_split_file_is_read_as_is(split: Path):
    joined = [{**a, **q} for q, a in zip(QUESTIONS[:2], [ANSWERS[0], ANSWERS[2]], strict=True)]
    path = _write(split / "mine", "val_q.json", joined)  # no val_a.json anywhere: not needed
    items, _, _ = load_benchmark("open-ended", path, split / "videos")
    assert _summary(items) == EXPECTED[:2]


def _one_line_error(data: Path, videos: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        load_benchmark("open-ended", data, videos)
    assert "\n" not in str(err.value)


def test_split_file_mistakes_are_one_line_errors(split: Path):
    data, videos = split / "data", split / "videos"
    (data / "test_a.json").rename(data / "kept_a.json")
    _one_line_error(data / "test_q.json", videos, "answers file .*test_a.json is missing")
    (data / "kept_a.json").rename(data / "test_a.json")
    (data / "test_q.json").unlink()
    _one_line_error(data / "test_a.json", videos, "questions file .*test_q.json is missing")

    _write(data, "val_q.json", QUESTIONS)
    _write(data, "val_a.json", [{**a, "question_id": "x" + a["question_id"]} for a in ANSWERS])
    _one_line_error(data / "val_q.json", videos, "share no question_id")
    _write(data, "val_a.json", [*ANSWERS, ANSWERS[0]])
    _one_line_error(data / "val_q.json", videos, "'v_1QIUV7WYKXg_3' has two answers")
    _write(data, "val_a.json", [*ANSWERS, ["not", "an", "object"]])
    _one_line_error(data / "val_q.json", videos, r"row\[6\] is not an answer row")


def test_cli_reports_a_missing_answers_file_in_one_line(split: Path):
    (split / "data" / "test_a.json").unlink()
    result = run_cli(
        "eval", "--model", str(split / "no-model"), "--benchmark", "open-ended",
        "--data", str(split / "data" / "test_q.json"), "--video-root", str(split / "videos"),
        "--out", str(split / "out"), cwd=split, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "test_a.json" in lines[0], result.stderr
