"""Benchmark loaders on sample files written here in each real layout: LongVideo-Reason's released rows,
Video-MME (flat JSON, JSONL, the nested JSON, parquet), generic multiple-choice JSONL and ActivityNet-QA style
open-ended rows. The loaders never decode videos, so the video files are placeholders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from longrl.errors import ConfigError, DataError
from longrl.eval.loaders import load_benchmark


def _videos(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not decoded by the loader")
    return root


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_longvideo_reason_released_rows(tmp_path: Path):
    root = _videos(tmp_path / "videos", "longvila_videos/I_Q3ajyOrcI.mp4", "longvila_videos/b.mp4")
    rows = [
        {"problem_id": 0, "problem": "What is the goal?\nA. eat\nB. sleep\nC. run\nD. swim", "data_type": "video",
         "problem_type": "goal", "reasoning": "...", "videos": "longvila_videos/I_Q3ajyOrcI.mp4",
         "answer": "<answer>B</answer>"},
        {"problem_id": 1, "problem": "Which came first?\nA. x\nB. y", "data_type": "video",
         "problem_type": "temporal", "reasoning": "", "videos": ["longvila_videos/b.mp4"],
         "answer": "<answer>A</answer>"},
        {"problem_id": 2, "problem": "Q?\nA. x\nB. y", "problem_type": "plot", "videos": "longvila_videos/none.mp4",
         "answer": "<answer>A</answer>"},
        {"problem_id": 3, "problem": "Q?\nA. x\nB. y", "problem_type": "plot", "videos": "longvila_videos/b.mp4",
         "answer": "<answer>E</answer>"},
    ]  # fmt: skip
    items, report, missing = load_benchmark("longvideo-reason", _jsonl(tmp_path / "test.jsonl", rows), root)
    assert [it.id for it in items] == ["0", "1"]
    first = items[0]
    assert first.example.question == "What is the goal?"
    assert first.example.options == ["eat", "sleep", "run", "swim"]
    assert first.example.answer == "B"
    assert first.category == "goal" and first.answer_kind == "multiple_choice"
    assert first.duration is None and first.subtitles is None
    assert items[1].example.video_rel == "longvila_videos/b.mp4"
    assert (report.total, report.kept) == (4, 2)
    assert dict(report.skipped) == {"video_missing": 1, "answer_not_in_options": 1}
    assert missing == 0


VIDEO_MME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "How many soldiers appear?",
     "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "C"},
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "", "videoID": "fFjv93ACGo8", "question_id": "001-2", "task_type": "Temporal Reasoning",
     "question": "What happens first?", "options": ["A. a", "B. b", "C. c", "D. d"], "answer": "A"},
    {"video_id": "301", "duration": "long", "domain": "Sports", "sub_category": "Football", "url": "",
     "videoID": "Zz9", "question_id": "301-1", "task_type": "Action Recognition", "question": "Who scores?",
     "options": ["A. p", "B. q", "C. r", "D. s"], "answer": "D"},
    # bad rows: unknown duration, answer outside the options, video not on disk
    {"video_id": "002", "duration": "huge", "videoID": "fFjv93ACGo8", "question_id": "002-1",
     "task_type": "OCR Problems", "question": "?", "options": ["A. a", "B. b"], "answer": "A"},
    {"video_id": "001", "duration": "short", "videoID": "fFjv93ACGo8", "question_id": "001-3",
     "task_type": "OCR Problems", "question": "Which?", "options": ["A. a", "B. b"], "answer": "E"},
    {"video_id": "404", "duration": "medium", "videoID": "gone", "question_id": "404-1",
     "task_type": "OCR Problems", "question": "Which?", "options": ["A. a", "B. b"], "answer": "A"},
]  # fmt: skip


def _check_video_mme(items, report):
    assert [it.id for it in items] == ["001-1", "001-2", "301-1"]
    one = items[0]
    assert one.example.options == ["One.", "Two.", "Three.", "Four."]
    assert one.example.answer == "C"
    assert one.category == "Counting Problem"
    assert one.duration == "short" and items[2].duration == "long"
    assert one.example.video_rel == "fFjv93ACGo8.mp4"
    assert items[2].example.video_rel == "Zz9.mkv"  # found by trying .mp4, .mkv, .webm
    assert report.total == 6 and report.kept == 3
    assert dict(report.skipped) == {"bad_field": 1, "answer_not_in_options": 1, "video_missing": 1}


@pytest.mark.parametrize("layout", ["json", "jsonl", "nested"])
def test_video_mme_json_layouts(tmp_path: Path, layout: str):
    root = _videos(tmp_path / "data", "fFjv93ACGo8.mp4", "Zz9.mkv")
    path = tmp_path / f"videomme.{'jsonl' if layout == 'jsonl' else 'json'}"
    if layout == "json":
        path.write_text(json.dumps(VIDEO_MME_ROWS))
    elif layout == "jsonl":
        _jsonl(path, VIDEO_MME_ROWS)
    else:
        # The older release: one object per video with its questions inside.
        videos: dict[tuple, dict] = {}
        for row in VIDEO_MME_ROWS:
            video_keys = ("video_id", "duration", "domain", "sub_category", "url", "videoID")
            key = tuple(row.get(k) for k in video_keys)
            entry = videos.setdefault(key, {k: row[k] for k in video_keys if k in row} | {"questions": []})
            entry["questions"].append({k: v for k, v in row.items() if k not in video_keys})
        path.write_text(json.dumps(list(videos.values())))
    items, report, _ = load_benchmark("video-mme", path, root)
    _check_video_mme(items, report)


def test_video_mme_parquet(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = _videos(tmp_path / "data", "fFjv93ACGo8.mp4", "Zz9.mkv")
    # Like the released file: every field a column, `options` a list<string> column.
    columns = sorted({k for row in VIDEO_MME_ROWS for k in row})
    table = pa.table({k: [row.get(k) for row in VIDEO_MME_ROWS] for k in columns})
    assert pa.types.is_list(table.schema.field("options").type)
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    items, report, _ = load_benchmark("video-mme", tmp_path / "test-00000-of-00001.parquet", root)
    _check_video_mme(items, report)


def test_parquet_without_pyarrow_is_one_config_error(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        load_benchmark("video-mme", tmp_path / "x.parquet", tmp_path)


def test_video_mme_subtitles(tmp_path: Path):
    root = _videos(tmp_path / "data", "fFjv93ACGo8.mp4", "Zz9.mkv")
    subs = tmp_path / "subtitle"
    subs.mkdir()
    (subs / "fFjv93ACGo8.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n")
    path = _jsonl(tmp_path / "v.jsonl", VIDEO_MME_ROWS[:3])
    items, _, missing = load_benchmark("video-mme", path, root, subtitles=True, subtitle_root=subs)
    assert [it.subtitles for it in items] == [subs / "fFjv93ACGo8.srt", subs / "fFjv93ACGo8.srt", None]
    assert missing == 1
    # Without a subtitle root the .srt files are looked for next to the videos.
    (root / "Zz9.srt").write_text("")
    items, _, missing = load_benchmark("video-mme", path, root, subtitles=True)
    assert [it.subtitles for it in items] == [None, None, root / "Zz9.srt"]
    assert missing == 2


def test_mc_jsonl(tmp_path: Path):
    root = _videos(tmp_path / "v", "clips/1.mp4", "clips/2.mp4")
    rows = [
        {"id": "q1", "question": "What animal?", "options": ["cat", "dog"], "answer": "dog",
         "video": "clips/1.mp4", "category": "spatial"},
        {"id": "q2", "question": "Which colour?", "options": {"A": "red", "B": "blue", "C": "green"},
         "answer": "C", "video": "clips/2.mp4", "category": "attribute"},
        {"id": "q3", "question": "Free text?", "answer": "a dog", "video": "clips/1.mp4"},  # no options
        {"id": "q1", "question": "Again?", "options": ["x", "y"], "answer": "A", "video": "clips/1.mp4"},
        {"id": "q5", "question": "Up?", "options": ["x", "y"], "answer": "A", "video": "../../etc/passwd"},
    ]  # fmt: skip
    items, report, _ = load_benchmark("mc", _jsonl(tmp_path / "mc.jsonl", rows), root)
    assert [(it.id, it.example.answer, it.category) for it in items] == [("q1", "B", "spatial"),
                                                                         ("q2", "C", "attribute")]  # fmt: skip
    assert all(it.answer_kind == "multiple_choice" for it in items)
    assert dict(report.skipped) == {"too_few_options": 1, "bad_field": 1, "video_outside_root": 1}
    assert (report.total, report.kept) == (5, 2)
    with pytest.raises(DataError, match="too_few_options"):
        load_benchmark("mc", tmp_path / "mc.jsonl", root, on_bad_row="fail")


def test_open_ended_activitynet_qa_style(tmp_path: Path):
    root = _videos(tmp_path / "v", "v_Lf_7RurLgp0.mp4", "v_abc.webm", "other.mp4")
    rows = [
        {"video_name": "v_Lf_7RurLgp0", "question_id": "v_Lf_7RurLgp0_0", "question": "is the man outdoors",
         "answer": "yes", "type": 3},
        {"video_name": "v_abc", "question_id": "v_abc_1", "question": "what color is the ball",
         "answer": "red", "type": 4},
        {"id": "x3", "video": "other.mp4", "question": "how many people", "answer": 2, "category": "number"},
        {"video_name": "v_missing", "question_id": "m_0", "question": "what?", "answer": "no", "type": 8},
        {"video_name": "v_abc", "question_id": "no_answer", "question": "what?"},
    ]  # fmt: skip
    items, report, _ = load_benchmark("open-ended", _jsonl(tmp_path / "anet.jsonl", rows), root)
    assert [(it.id, it.example.answer, it.category) for it in items] == [
        ("v_Lf_7RurLgp0_0", "yes", "yes/no"),
        ("v_abc_1", "red", "color"),
        ("x3", "2", "number"),
    ]
    assert items[1].example.video_rel == "v_abc.webm"
    assert all(it.answer_kind == "open_ended" and not it.example.options for it in items)
    assert dict(report.skipped) == {"video_missing": 1, "missing_field": 1}


def test_user_mistakes_are_one_line_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown benchmark"):
        load_benchmark("mvbench", tmp_path / "x.json", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_benchmark("video-mme", tmp_path / "x.json", tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_benchmark("open-ended", tmp_path / "empty.jsonl", tmp_path)
    _jsonl(tmp_path / "none.jsonl", [{"question": "q", "answer": "a", "video": "gone.mp4"}])
    with pytest.raises(DataError, match="no usable rows"):
        load_benchmark("open-ended", tmp_path / "none.jsonl", tmp_path)
    with pytest.raises(DataError, match="subtitle root"):
        _videos(tmp_path, "ok.mp4")
        _jsonl(tmp_path / "one.jsonl", [{"question": "q", "answer": "a", "video": "ok.mp4"}])
        load_benchmark(
            "open-ended", tmp_path / "one.jsonl", tmp_path, subtitles=True, subtitle_root=tmp_path / "no"
        )
