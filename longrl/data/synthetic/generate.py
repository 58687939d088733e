"""`generate_synthetic`: timelines -> videos + questions -> one released-schema JSONL file in an output folder.

    result = generate_synthetic("data/", num_videos=200, questions_per_video=4, seed=0)
    examples, report = load_examples(result.rows_path, result.out_dir)

Output folder layout (nothing else is touched):
    {name}.jsonl          rows in the released LongVideo-Reason schema (`videos` relative to the folder)
    {name}.meta.json      the arguments, the task config, counts and every video's timeline
    videos/{video_id}-{hash}.mp4   one video per timeline; the hash covers the timeline and render settings

Resumable and idempotent: a video whose file exists is reused (files are written under a temporary name and
renamed, so an existing file is complete); the rows and meta files are rewritten whole, atomically, and only
when their content changes. The same arguments always give the same rows.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from longrl.atomic import write_text_atomic
from longrl.data.schema import LETTERS, released_row
from longrl.data.synthetic.questions import (
    CATEGORIES,
    NUM_OPTIONS,
    Candidate,
    Question,
    candidates,
    with_options,
)
from longrl.data.synthetic.render import pick_codec, render_frames, write_mp4
from longrl.data.synthetic.timeline import TaskConfig, Timeline, sample_timeline
from longrl.errors import ConfigError, DataError

GENERATOR = "longrl.data.synthetic"
MAX_ATTEMPTS = 64  # timeline draws per video before settling for the one that supports the most questions
VIDEO_DIR = "videos"


@dataclass(frozen=True)
class SyntheticResult:
    """What `generate_synthetic` produced.

    rows: the rows as written (released schema), in file order. videos: one path per video, by index.
    counts: questions per category (every requested category, zeros included). encoded / reused: videos
    written by this call / found already written. seconds: wall time of the call.
    """

    out_dir: Path
    rows_path: Path
    meta_path: Path
    videos: list[Path]
    timelines: list[Timeline]
    rows: list[dict]
    counts: dict[str, int]
    encoded: int
    reused: int
    seconds: float


def check_categories(categories: Sequence[str]) -> tuple[str, ...]:
    """Validate a category list (ConfigError naming the bad one); returns it as a tuple."""
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    categories = tuple(categories)
    if not categories:
        raise ConfigError(f"synthetic categories: give at least one of {', '.join(CATEGORIES)}")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ConfigError(f"synthetic categories {unknown} are unknown; choose from {', '.join(CATEGORIES)}")
    if len(set(categories)) != len(categories):
        raise ConfigError(f"synthetic categories repeat: {list(categories)}")
    return categories


def task_config(**knobs: Any) -> TaskConfig:
    """A TaskConfig from keyword knobs; an unknown knob is a ConfigError listing the known ones."""
    known = {f.name for f in fields(TaskConfig)}
    unknown = sorted(set(knobs) - known)
    if unknown:
        raise ConfigError(f"unknown synthetic task knob(s) {unknown}; known: {', '.join(sorted(known))}")
    return TaskConfig(**knobs)


# Plot answers cycle through these counts (over the dataset's plot questions) so that "0", the count a
# timeline supports most often, is not a shortcut; a video that cannot supply its count asks another one.
PLOT_COUNT_CYCLE = (0, 1, 2)
# Lookup counts are over the whole video: 0 (a task colour not shown) to 3.
LOOKUP_COUNT_CYCLE = (0, 1, 2, 3)


@dataclass(frozen=True)
class _Slot:
    """One question a video is due to ask: its category and, for plot, the count it should have."""

    category: str
    count: int | None = None

    def fits(self, candidate: Candidate) -> bool:
        return candidate.category == self.category and (
            self.count is None or candidate.answer == str(self.count)
        )


def _slots(
    index: int, questions_per_video: int, categories: tuple[str, ...], config: TaskConfig
) -> list[_Slot]:
    """The questions video `index` is due to ask: categories round robin over the whole dataset."""
    cycle = LOOKUP_COUNT_CYCLE if config.questions == "lookup" else PLOT_COUNT_CYCLE
    out = []
    for j in range(questions_per_video):
        number = index * questions_per_video + j
        category = categories[number % len(categories)]
        # number // len(categories) counts this category's earlier slots in the dataset.
        turn = number // len(categories)
        counted = category == "plot" and config.questions != "ordinal"
        out.append(_Slot(category, cycle[turn % len(cycle)] if counted else None))
    return out


def _shortfall(timeline: Timeline, slots: list[_Slot]) -> int:
    """How many of the slots the timeline cannot fill exactly (distinct questions, right category and count)."""
    pools = {cat: candidates(timeline, cat) for cat in {s.category for s in slots}}
    short = 0
    for slot in sorted(slots, key=lambda s: s.count is None):  # exact counts first: they are the scarce ones
        match = next((c for c in pools[slot.category] if slot.fits(c)), None)
        if match is None:
            short += 1
        else:
            pools[slot.category].remove(match)
    return short


def timeline_for(
    index: int,
    *,
    seed: int = 0,
    config: TaskConfig | None = None,
    categories: Sequence[str] = CATEGORIES,
    questions_per_video: int = 4,
) -> Timeline:
    """The timeline of video `index` exactly as `generate_synthetic` with these arguments draws it.

    Timelines are drawn until one supports every question the video is due to ask (at most MAX_ATTEMPTS
    draws; then the draw that supports the most is kept and missing questions are replaced, see
    `questions_for`).
    """
    config = config or TaskConfig()
    categories = check_categories(categories)
    slots = _slots(index, questions_per_video, categories, config)
    best: tuple[int, Timeline] | None = None
    for attempt in range(MAX_ATTEMPTS):
        timeline = sample_timeline(config, seed, index, attempt)
        short = _shortfall(timeline, slots)
        if short == 0:
            return timeline
        if best is None or short < best[0]:
            best = (short, timeline)
    return best[1]


def questions_for(
    timeline: Timeline, categories: Sequence[str], questions_per_video: int, first_number: int
) -> list[Question]:
    """The questions of one video, distinct, each category asked in the dataset's round-robin turn.

    A slot the timeline cannot fill exactly takes another question of its category (another count), else
    one of the next category; a video with no question left asks fewer.
    first_number: the dataset-wide number of this video's first question; answer letters are dealt from a
    seeded shuffle of A-D per block of four consecutive questions, so letters stay balanced.
    """
    categories = check_categories(categories)
    rng = np.random.default_rng([timeline.seed, timeline.index, 0xC0FFEE])
    pools = {cat: candidates(timeline, cat) for cat in categories}
    out: list[Question] = []
    for slot in _slots(timeline.index, questions_per_video, categories, timeline.config):
        exact = [c for c in pools[slot.category] if slot.fits(c)]
        if exact:
            pool = exact
        else:
            k = categories.index(slot.category)
            pool = next((pools[cat] for cat in categories[k:] + categories[:k] if pools[cat]), [])
        if not pool:
            break
        chosen = pool[int(rng.integers(len(pool)))]
        pools[chosen.category] = [c for c in pools[chosen.category] if c.key != chosen.key]
        slot = answer_slot(timeline.seed, first_number + len(out))
        out.append(with_options(chosen, slot, rng, canonical=timeline.config.canonical_options))
    return out


def answer_slot(seed: int, number: int) -> int:
    """Where the answer goes for dataset question `number`: a seeded shuffle of the slots per block of four."""
    block = np.random.default_rng([seed, 0xA11CE, number // NUM_OPTIONS]).permutation(NUM_OPTIONS)
    return int(block[number % NUM_OPTIONS])


def _write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` atomically unless the file already holds exactly it; True when written."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    write_text_atomic(path, text)
    return True


def _check_out_dir(out_dir: Path, rows_path: Path, meta_path: Path) -> None:
    """Refuse an output folder whose rows or meta file this generator did not write (never overwrite user data)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} is a file; pass --out a folder")
    if not rows_path.exists() and not meta_path.exists():
        return
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ours = meta.get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DataError(
            f"{rows_path if rows_path.exists() else meta_path} exists and was not written by the synthetic "
            "generator; choose another --out folder or another name"
        )


def generate_synthetic(
    out_dir: str | os.PathLike,
    *,
    num_videos: int,
    questions_per_video: int = 4,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
    num_frames: int = 256,
    fps: int = 8,
    size: int = 56,
    objects_per_video: int | None = None,
    min_appearances: int = 4,
    max_appearances: int = 6,
    move_prob: float = 0.5,
    name: str = "synthetic",
    progress: Callable[[int, int], None] | None = None,
    **timing: Any,
) -> SyntheticResult:
    """Generate `num_videos` videos and `questions_per_video` questions each into `out_dir`.

    categories: which of temporal, goal, spatial, plot to ask (a list or "a,b"); questions cycle through
    them so each gets an equal share. Difficulty knobs: objects_per_video (colours per video; None: the
    TaskConfig default for the question style),
    min/max_appearances (episodes per video), move_prob; `timing` takes any other TaskConfig field
    (min_gap_s, min_visible_s, questions, canonical_options, colours, ...). progress(done, total) is called after each video.
    Raises ConfigError for a bad argument, DataError for an output folder holding someone else's rows file.
    """
    started = time.perf_counter()
    categories = check_categories(categories)
    for label, value in (("num_videos", num_videos), ("questions_per_video", questions_per_video)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"synthetic {label} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"synthetic name must be a plain file stem, got {name!r}")
    config = task_config(
        num_frames=num_frames,
        fps=fps,
        size=size,
        objects_per_video=objects_per_video,
        min_appearances=min_appearances,
        max_appearances=max_appearances,
        move_prob=move_prob,
        **timing,
    )
    out = Path(out_dir)
    rows_path, meta_path = out / f"{name}.jsonl", out / f"{name}.meta.json"
    _check_out_dir(out, rows_path, meta_path)
    (out / VIDEO_DIR).mkdir(parents=True, exist_ok=True)

    codec = pick_codec()
    videos: list[Path] = []
    timelines: list[Timeline] = []
    rows: list[dict] = []
    encoded = reused = 0
    number = 0  # dataset-wide question number (answer letters are dealt per block of four)
    for index in range(num_videos):
        timeline = timeline_for(
            index, seed=seed, config=config, categories=categories, questions_per_video=questions_per_video
        )
        rel = f"{VIDEO_DIR}/{timeline.video_id}-{timeline.fingerprint(codec)}.mp4"
        path = out / rel
        if path.is_file():
            reused += 1
        else:
            write_mp4(path, render_frames(timeline), config.fps, codec)
            encoded += 1
        for j, q in enumerate(questions_for(timeline, categories, questions_per_video, number)):
            rows.append(
                released_row(
                    problem_id=f"{timeline.video_id}-q{j}",
                    question=q.question,
                    options=list(q.options),
                    answer=LETTERS[q.answer_index],
                    video=rel,
                    reasoning=q.reasoning,
                    problem_type=q.category,
                )
            )
            number += 1
        videos.append(path)
        timelines.append(timeline)
        if progress is not None:
            progress(index + 1, num_videos)

    counts = {cat: 0 for cat in categories}
    counts.update(Counter(row["problem_type"] for row in rows))
    _write_if_changed(rows_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    meta = {
        "generator": GENERATOR,
        "args": {
            "num_videos": num_videos,
            "questions_per_video": questions_per_video,
            "categories": list(categories),
            "seed": seed,
        },
        "task": config.to_dict(),
        "codec": codec,
        "rows": len(rows),
        "counts": counts,
        "timelines": [
            {**t.to_dict(), "video": v.relative_to(out).as_posix()}
            for t, v in zip(timelines, videos, strict=True)
        ],
    }
    _write_if_changed(meta_path, json.dumps(meta, indent=1) + "\n")
    return SyntheticResult(
        out_dir=out,
        rows_path=rows_path,
        meta_path=meta_path,
        videos=videos,
        timelines=timelines,
        rows=rows,
        counts=counts,
        encoded=encoded,
        reused=reused,
        seconds=time.perf_counter() - started,
    )
