"""`longrl eval --nproc 2 --sp 2` re-runs itself under torchrun (2 gloo workers sharding the vision encode)
and writes the same predictions as the single-process run (the reference; greedy, fp32 tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli
from videos import write_video

from longrl.eval.runner import EvalConfig, run_eval
from longrl.models import make_tiny


@pytest.mark.slow  # torchrun + 2 workers importing torch/transformers: ~30 s here
def test_nproc_2_sp_2_matches_one_process(tmp_path: Path, monkeypatch):
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    make_tiny(tmp_path / "tiny")
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", 24, 8)
    write_video(tmp_path / "videos" / "b.mp4", 16, 8)
    rows = [{"id": f"q{i}", "question": f"Which part {i}?", "options": ["x", "y", "z"], "answer": "B",
             "video": ["a.mp4", "b.mp4"][i % 2], "category": "c"} for i in range(3)]  # fmt: skip
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(model=tmp_path / "tiny", benchmark="mc", data=tmp_path / "mc.jsonl",
                  video_root=tmp_path / "videos", frames=(4,), max_new_tokens=10, require_answer_tag=False)  # fmt: skip
    run_eval(EvalConfig(out=tmp_path / "single", **common))
    result = run_cli(
        "eval", "--model", str(tmp_path / "tiny"), "--benchmark", "mc", "--data", str(tmp_path / "mc.jsonl"),
        "--video-root", str(tmp_path / "videos"), "--out", str(tmp_path / "sp2"), "--frames", "4",
        "--max-new-tokens", "10", "--no-require-answer-tag", "--nproc", "2", "--sp", "2",
        cwd=tmp_path, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("overall") == 1  # only rank 0 reports
    single = (tmp_path / "single" / "frames_4" / "predictions.jsonl").read_text()
    sharded = (tmp_path / "sp2" / "frames_4" / "predictions.jsonl").read_text()
    assert sharded == single
