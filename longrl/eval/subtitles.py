"""Subtitles (.srt) for the sampled frames, inserted into the question as timestamped text.

    cues = read_srt("videomme/subtitle/fFjv93ACGo8.srt")
    times = frame_times(probe_video(path), SamplingConfig(num_frames=64))   # what the model will see
    example = with_subtitles(example, select_cues(cues, times))
    # question: "Subtitles:\\n[12.3s] Welcome back ...\\n[15.0s] ...\\n\\nWhat is ...?"

Which lines: with rule "frames" (the default, Video-MME's protocol) a line is kept when one of the sampled
frames is shown while it is on screen (start <= t < end), so the text grows with the frame count as the
pixels do; with rule "span" every line overlapping the sampled frames' span [first frame, last frame + one
frame interval) is kept. The parser takes real-world files: a UTF-8 BOM, CRLF or CR line ends, missing
blank lines between cues, missing cue numbers, "." instead of "," before milliseconds, HTML tags
(`<font color="white" size=".72c">`, `<i>`) and ASS override tags (`{\\an8}`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longrl.data.schema import Example
from longrl.errors import DataError
from longrl.video.decode import VideoInfo
from longrl.video.sampling import SamplingConfig, plan_frames

SUBTITLE_RULES = ("frames", "span")

_TIME = r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_INDEX = re.compile(r"^\s*\d+\s*$")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")


@dataclass(frozen=True)
class Cue:
    """One subtitle line: shown from start_s (inclusive) to end_s (exclusive), text on one line."""

    start_s: float
    end_s: float
    text: str


def _seconds(h: str, m: str, s: str, ms: str | None) -> float:
    # "5" after the comma is 500 ms, as players read it (the field is a fraction written to 3 digits).
    return int(h) * 3600 + int(m) * 60 + int(s) + (int(ms.ljust(3, "0")) / 1000 if ms else 0.0)


def parse_srt(text: str) -> list[Cue]:
    """The cues of an .srt text in file order (empty-text cues dropped; end clamped to >= start)."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cues: list[Cue] = []
    i = 0
    while i < len(lines):
        m = _TIMING.match(lines[i])
        if not m:
            i += 1
            continue
        start = _seconds(*m.group(1, 2, 3, 4))
        end = max(start, _seconds(*m.group(5, 6, 7, 8)))
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() and not _TIMING.match(lines[i]):
            # A cue number right before the next timing line starts the next cue (no blank line between).
            if _INDEX.match(lines[i]) and i + 1 < len(lines) and _TIMING.match(lines[i + 1]):
                break
            body.append(lines[i])
            i += 1
        cue_text = " ".join(_TAG.sub("", " ".join(body)).split())
        if cue_text:
            cues.append(Cue(start, end, cue_text))
    return cues


def read_srt(path: str | os.PathLike) -> list[Cue]:
    """Parse an .srt file (UTF-8, or Latin-1 when it is not UTF-8). DataError when it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"subtitle file {path} cannot be read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old subtitle files are often Windows-1252 / Latin-1
    return parse_srt(text)


def frame_times(info: VideoInfo, sampling: SamplingConfig) -> np.ndarray:
    """float64 [n] nominal timestamps (s) of the frames `sampling` takes from the whole video `info` probed:
    the frame plan the decoder will follow (`longrl.video.sampling.plan_frames`). Empty when no plan fits."""
    try:
        return plan_frames(info.num_frames, info.fps, sampling).timestamps_s
    except ValueError:  # TooFewFrames with on_short="error", or no frame: the encode reports the video
        return np.zeros(0)


def select_cues(cues: Sequence[Cue], times: Sequence[float] | np.ndarray, rule: str = "frames") -> list[Cue]:
    """The cues to show with frames sampled at `times` (seconds, ascending), in time order (rules above)."""
    if rule not in SUBTITLE_RULES:
        raise ValueError(f"subtitle rule must be one of {SUBTITLE_RULES}, got {rule!r}")
    times = np.asarray(times, dtype=np.float64)
    if times.size == 0:
        return []
    if rule == "frames":
        picked = [c for c in cues if np.any((times >= c.start_s) & (times < c.end_s))]
    else:
        step = float(np.diff(times).mean()) if times.size > 1 else 0.0
        lo, hi = float(times[0]), float(times[-1]) + step
        picked = [c for c in cues if c.start_s < hi and c.end_s > lo]
    return sorted(picked, key=lambda c: (c.start_s, c.end_s))


def format_subtitles(cues: Sequence[Cue]) -> str:
    """ "Subtitles:\\n[12.3s] text\\n..." (start time of each line, one decimal); "" for no cues."""
    if not cues:
        return ""
    return "Subtitles:\n" + "\n".join(f"[{c.start_s:.1f}s] {c.text}" for c in cues)


def with_subtitles(example: Example, cues: Sequence[Cue]) -> Example:
    """The example with the subtitle block before its question (unchanged when there are no cues)."""
    block = format_subtitles(cues)
    if not block:
        return example
    return dataclasses.replace(example, question=f"{block}\n\n{example.question}")
