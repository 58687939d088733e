"""The records each stage writes (one JSON object per line, keyed by "id"), their ids and file names.

Ids are stable across runs, so a restarted run recognizes what is done:
    video     "<slug of the relative path>-<8 hex of its hash>"   e.g. "kitchen_cooking-3f2a1b9c"
    clip      "<video id>/c0003"                                  the 4th clip of the video
    question  "<video id>/q01-goal"                               question slot 1 (category goal)
Synthetic questions keep the generator's ids ("syn00003-q1").

The question record is what filter and split read, whichever source made it:
    {"id", "video_id", "video" (path relative to the video root), "category", "question",
     "options" (4 texts, no letters), "answer" (letter), "reasoning", ...stage extras}
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from longrl.data.schema import Example

# Stage -> its record file in the output folder (split writes the three data files instead).
STAGE_FILES = {
    "scan": "videos.jsonl",
    "segment": "clips.jsonl",
    "caption": "captions.jsonl",
    "questions": "questions.jsonl",
    "refine": "refined.jsonl",
    "synthetic": "synthetic_questions.jsonl",
    "filter": "filtered.jsonl",
}
REJECTED_FILE = "rejected.jsonl"
MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"sft": "sft.jsonl", "rl": "rl.jsonl", "eval": "eval.jsonl"}

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")


def video_id(rel_path: str) -> str:
    """A readable, stable id for the video at `rel_path` (POSIX, relative to the video root)."""
    stem = rel_path.rsplit(".", 1)[0] if "." in Path(rel_path).name else rel_path
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[-48:] or "video"
    return f"{slug}-{hashlib.sha1(rel_path.encode('utf-8')).hexdigest()[:8]}"


def clip_id(vid: str, index: int) -> str:
    return f"{vid}/c{index:04d}"


def question_id(vid: str, slot: int, category: str) -> str:
    return f"{vid}/q{slot:02d}-{category}"


def format_time(seconds: float) -> str:
    """Seconds -> "MM:SS" (or "H:MM:SS" from an hour on); a tenth of a second is kept when there is one."""
    seconds = max(0.0, float(seconds))
    tenths = round(seconds * 10)
    whole, tenth = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    sec = f"{secs:02d}" if tenth == 0 else f"{secs:02d}.{tenth}"
    return f"{hours}:{minutes:02d}:{sec}" if hours else f"{minutes:02d}:{sec}"


def floor_tenth(seconds: float) -> float:
    """Round down to a tenth of a second (labels never point past the end of a video)."""
    return math.floor(seconds * 10 + 1e-9) / 10


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def question_record(
    *,
    rid: str,
    video_id: str,
    video: str,
    category: str,
    question: str,
    options: list[str],
    answer: str,
    reasoning: str,
    **extra: Any,
) -> dict[str, Any]:
    """A question record (field order fixed, extras after)."""
    return {
        "id": rid,
        "video_id": video_id,
        "video": video,
        "category": category,
        "question": question,
        "options": list(options),
        "answer": answer,
        "reasoning": reasoning,
        **extra,
    }


def example_of(record: dict[str, Any], video_root: Path) -> Example:
    """The question record as a dataset Example (video resolved under `video_root`)."""
    return Example(
        id=record["id"],
        question=record["question"],
        options=list(record["options"]),
        answer=record["answer"],
        reasoning=record["reasoning"],
        category=record["category"],
        data_type="video",
        video=(video_root / record["video"]).resolve(),
        video_rel=record["video"],
    )
