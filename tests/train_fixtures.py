"""A tiny training setup on disk for the trainer tests: the tiny model folder, a few short videos, rows.

make_train_setup(tmp) writes tmp/model (the tiny Qwen2.5-VL), tmp/videos/v{i}.mp4 (8 frames each) and
tmp/train.jsonl (plain multiple-choice rows with reasoning). sft_config(...) is an SFTConfig for them
(4 frames per video, CPU, fast decoding) with overrides by dotted key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.videos import write_video

QUESTIONS = [
    ("What colour is the bottom of the first frame?", ["red", "green", "blue"], "B", "The bars are dark."),
    ("How many bars are white at the start?", ["none", "one", "two"], "A", "Frame zero has no bits set."),
    ("Does the video loop?", ["yes", "no"], "B", "The frame index only grows."),
    ("What changes over time?", ["the bars", "nothing", "the size"], "A", "The bars count the frames."),
    ("Is there sound?", ["yes", "no"], "B", "Only a video stream is written."),
    ("How wide is the video?", ["64 pixels", "10 pixels"], "A", "It is written 64 pixels wide."),
]


def make_train_setup(
    root: Path, *, num_rows: int = 6, num_videos: int = 3, frames: int = 8
) -> dict[str, Path]:
    """Write the model, videos and data under `root`; returns their paths (model, data, video_root)."""
    from longrl.models import make_tiny

    root = Path(root)
    model = make_tiny(root / "model")
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(num_videos):
        write_video(videos / f"v{i}.mp4", num_frames=frames, fps=4)
    rows = []
    for i in range(num_rows):
        question, options, answer, reasoning = QUESTIONS[i % len(QUESTIONS)]
        rows.append(
            {
                "id": f"q{i}",
                "question": question,
                "options": options,
                "answer": answer,
                "reasoning": reasoning,
                "video": f"v{i % num_videos}.mp4",
                "category": "test",
            }
        )
    data = root / "train.jsonl"
    write_rows(data, rows)
    return {"model": model, "data": data, "video_root": videos}


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_overrides(paths: dict[str, Path], out: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted overrides for a fast CPU SFT run on `paths` (from make_train_setup) writing to `out`."""
    values = {
        "model.path": str(paths["model"]),
        "data.train": str(paths["data"]),
        "data.video_root": str(paths["video_root"]),
        "data.frames": 4,
        "data.isolate_decode": False,
        "run.out": str(out),
        "run.steps": 4,
        "run.save_every": 0,
        "run.device": "cpu",
        "run.progress": False,
        "optim.lr": 1e-3,
        "optim.schedule": "constant",
        "batch_size": 2,
        "max_response_tokens": 64,
    }
    values.update(extra or {})
    return values


def sft_config(paths: dict[str, Path], out: Path, extra: dict[str, Any] | None = None):
    """An SFTConfig (through load_config, as the CLI builds it) with `sft_overrides`."""
    from longrl.train.config import SFTConfig
    from longrl.train.config_io import load_config

    return load_config(SFTConfig, None, sft_overrides(paths, out, extra))
