"""Video-MME with subtitles, k samples, end to end in-process with the tiny model.

References: the subtitle lines of each frame setting are worked out by hand from the frame plan (24 frames at
8 fps, frame-center sampling); pass@k and accuracy are recomputed from the written records; the duration
buckets are the dataset's own (a 3 s video labelled "medium" stays "medium")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from videos import write_video

from longrl.eval.loaders import load_benchmark
from longrl.eval.runner import EvalConfig, prepare, run_eval
from longrl.eval.scoring import pass_at_k
from longrl.models import make_tiny
from longrl.video.sampling import SamplingConfig

# 24 frames at 8 fps (3 s). 4 frames: indices 3, 9, 15, 21 -> 0.375, 1.125, 1.875, 2.625 s.
# 8 frames: indices 1, 4, 7, ..., 22 -> 0.125, 0.5, 0.875, 1.25, 1.625, 2.0, 2.375, 2.75 s.
SRT = """1
00:00:00,000 --> 00:00:00,500
<font color="white" size=".72c">one</font>

2
00:00:00,500 --> 00:00:01,000
two

3
00:00:01,000 --> 00:00:02,000
three

4
00:00:02,500 --> 00:00:03,000
four
"""
LINES = {4: ["one", "three", "four"], 8: ["one", "two", "three", "four"]}  # "two" is seen only at 8 frames


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_videomme")
    make_tiny(root / "tiny")
    data = root / "data"
    data.mkdir()
    write_video(data / "vidA.mp4", 24, 8)
    write_video(data / "vidB.mp4", 16, 8)
    subs = root / "subtitle"
    subs.mkdir()
    (subs / "vidA.srt").write_text(SRT)
    rows = [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "History",
         "videoID": "vidA", "question_id": f"001-{i}", "task_type": ["Counting Problem", "OCR Problems"][i % 2],
         "question": f"Question {i}?", "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "ABCD"[i]}
        for i in range(3)
    ] + [
        {"video_id": "002", "duration": "medium", "domain": "Sports", "sub_category": "Ball",
         "videoID": "vidB", "question_id": "002-1", "task_type": "Counting Problem",
         "question": "How many?", "options": ["A. 1", "B. 2", "C. 3", "D. 4"], "answer": "B"},
    ]  # fmt: skip
    (root / "videomme.json").write_text(json.dumps(rows))
    return root


def _config(bench: Path, out: str) -> EvalConfig:
    return EvalConfig(
        model=bench / "tiny", benchmark="video-mme", data=bench / "videomme.json", video_root=bench / "data",
        out=bench / out, frames=(4, 8), samples=2, max_new_tokens=8, batch_size=3, subtitles=True,
        subtitle_root=bench / "subtitle", require_answer_tag=False, seed=7,
    )  # fmt: skip


def test_prepare_inserts_the_lines_of_the_sampled_frames(bench: Path):
    items, _, missing = load_benchmark(
        "video-mme", bench / "videomme.json", bench / "data", subtitles=True, subtitle_root=bench / "subtitle"
    )
    assert missing == 1
    times = {
        4: "[0.0s] one\n[1.0s] three\n[2.5s] four",
        8: "[0.0s] one\n[0.5s] two\n[1.0s] three\n[2.5s] four",
    }
    for frames, block in times.items():
        prepared = prepare(items[0], SamplingConfig(num_frames=frames), "auto")
        assert prepared.example.question == f"Subtitles:\n{block}\n\nQuestion 0?"
        assert prepared.subtitle_lines == len(LINES[frames])
        assert (prepared.duration, prepared.duration_s) == ("short", 3.0)
    no_srt = prepare(items[3], SamplingConfig(num_frames=4), "auto")
    assert no_srt.example.question == "How many?" and no_srt.subtitle_lines is None
    assert no_srt.duration == "medium"  # the dataset's bucket, not the probed 2 s


def test_subtitles_and_k_samples_end_to_end(bench: Path):
    metrics = run_eval(_config(bench, "out"))
    assert metrics["settings"] == ["frames_4", "frames_8"]
    assert metrics["missing_subtitles"] == 1
    for frames in (4, 8):
        records = [
            json.loads(line)
            for line in (bench / "out" / f"frames_{frames}" / "predictions.jsonl").read_text().splitlines()
        ]
        assert [r["id"] for r in records] == ["001-0", "001-1", "001-2", "002-1"]
        assert [r["subtitle_lines"] for r in records] == [len(LINES[frames])] * 3 + [None]
        assert all(len(r["responses"]) == 2 == len(r["correct"]) for r in records)
        m = metrics["by_setting"][f"frames_{frames}"]
        accs = [sum(r["correct"]) / 2 for r in records]
        assert m["accuracy"] == pytest.approx(sum(accs) / 4)
        assert m["pass_at_k"]["1"] == pytest.approx(m["accuracy"])
        assert m["pass_at_k"]["2"] == pytest.approx(
            sum(pass_at_k(2, sum(r["correct"]), 2) for r in records) / 4
        )
        assert set(m["per_category"]) == {"Counting Problem", "OCR Problems"}
        assert m["per_category"]["Counting Problem"]["n"] == 3
        assert {k: v["n"] for k, v in m["per_duration"].items()} == {"short": 3, "medium": 1}
    assert metrics["temperature"] == 1.0  # k > 1 samples at temperature 1 unless told otherwise
    # Sampling is seeded by the run seed and the batch's ids: a fresh run writes the same responses.
    again = run_eval(_config(bench, "again"))
    for frames in (4, 8):
        a = (bench / "out" / f"frames_{frames}" / "predictions.jsonl").read_text()
        b = (bench / "again" / f"frames_{frames}" / "predictions.jsonl").read_text()
        assert a == b
    assert again["by_setting"] == metrics["by_setting"]
