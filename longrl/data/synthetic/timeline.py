"""The seeded timeline of one synthetic video: coloured objects appear in a region, may move, and disappear.

The frame is a 2x2 grid of regions (top-left, top-right, bottom-left, bottom-right). Each region is exactly
the area of one merged Qwen2.5-VL video token when the frame is 56x56 (28x28 pixels per token), so a region's
colour is one token's content. An `Episode` is one appearance of one object: it appears in a region at
`start_s`, optionally slides to an adjacent region, and disappears at `end_s` (or stays to the end).

Rules that keep every question answerable from a few dozen sampled frames:
- consecutive appearances (of any objects) are at least `min_gap_s` apart, so their order is never a tie;
- a region holds at most one object at a time, with `region_margin_s` of empty time between occupants;
- an object reappears only after `min_absence_s` out of view, so its appearances can be counted;
- every episode lasts at least `min_visible_s`; a move holds still `hold_s` before and after it.
All times are integer multiples of `time_step_s`, so frame boundaries are exact.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from longrl.errors import ConfigError

# Saturated flat colours far apart in RGB (and in YUV after 4:2:0 encoding), so a random vision tower tells
# them apart. Values stay inside video range (16..235) so encoding does not clip them differently.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 230),
    "yellow": (230, 220, 30),
    "white": (235, 235, 235),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "orange": (240, 140, 20),
}
DEFAULT_COLOURS = ("red", "green", "blue", "yellow", "white", "magenta")
# Lookup questions use exactly four colours, so "which object ..." options are always these four in this order.
LOOKUP_COLOURS = ("red", "green", "blue", "yellow")
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
# With `tinted_regions`, each region's empty floor has its own dark tint (in REGIONS order), so the token of
# a region says which region it is even where an object covers most of it; far from every palette colour.
REGION_TINTS: tuple[tuple[int, int, int], ...] = ((24, 24, 24), (24, 24, 80), (24, 72, 24), (80, 24, 24))

# "lookup": one fact per question; "ordinal": the first / last object; "multihop": two moments per question
# (see the `questions` module).
QUESTION_STYLES = ("lookup", "multihop", "ordinal")

# Region r is at grid row r // 2, column r % 2.
REGIONS = ("top-left", "top-right", "bottom-left", "bottom-right")


def adjacent_regions(region: int) -> tuple[int, int]:
    """The two regions that share an edge with `region` (horizontal neighbour, vertical neighbour)."""
    return region ^ 1, region ^ 2


@dataclass(frozen=True)
class TaskConfig:
    """Video format and difficulty knobs of the synthetic task (defaults: 256 frames at 8 fps = 32 s, 56x56).

    For fewer frames per video keep the duration and lower fps (64 frames at 2 fps is the same 32 s task).
    size: frame side, a multiple of 56; 56 -> one 28x28 token per region, 112 -> 2x2 tokens per region.

    colours: the task's colours (None: LOOKUP_COLOURS for lookup and ordinal questions, DEFAULT_COLOURS for
        multihop).
    objects_per_video: how many distinct colours one video uses, drawn from `colours` (None: 3 for lookup and
        ordinal, so one colour is missing and "how many times" can be 0; 4 for multihop).
    min_appearances / max_appearances: how many episodes (appearances) a video tries to place.
    move_prob: chance that an episode slides to an adjacent region (goal questions need at least one).
    object_px: side of an object's square in pixels (None: 20/56 of the frame, i.e. 20 px at 56x56).
    tinted_regions: each region's background has its own dark tint (REGION_TINTS), else all BACKGROUND.
    questions: "lookup" (one fact about a named object per question, e.g. where did X appear), "ordinal"
        (about the first and the last object to appear; colours and object counts as for lookup) or
        "multihop" (each question links two moments, e.g. where was X when Y appeared); see `questions`.
    canonical_options: options in a fixed order (regions as REGIONS, counts ascending, colours in `colours`
        order), so an answer's letter follows from its text; else the answer's slot is dealt at random.
    The *_s fields are seconds, multiples of time_step_s (see the module docstring for what each one rules).
    """

    num_frames: int = 256
    fps: int = 8
    size: int = 56
    colours: tuple[str, ...] | None = None
    objects_per_video: int | None = None
    min_appearances: int = 4
    max_appearances: int = 6
    move_prob: float = 0.5
    object_px: int | None = None
    tinted_regions: bool = True
    questions: str = "lookup"
    canonical_options: bool = True
    time_step_s: float = 1.0
    first_appearance_s: float = 1.0
    min_gap_s: float = 3.0
    gap_jitter_s: float = 2.0
    min_visible_s: float = 5.0
    max_visible_s: float = 9.0
    hold_s: float = 3.0
    move_s: float = 2.0
    min_absence_s: float = 3.0
    region_margin_s: float = 1.0
    spatial_window_s: float = 2.0

    def __post_init__(self) -> None:
        """Check every knob; ConfigError naming the knob and the fix."""
        four_colours = self.questions != "multihop"  # lookup and ordinal: options are the four colours
        if self.colours is None:
            object.__setattr__(self, "colours", LOOKUP_COLOURS if four_colours else DEFAULT_COLOURS)
        if self.objects_per_video is None:
            object.__setattr__(self, "objects_per_video", 3 if four_colours else 4)
        object.__setattr__(self, "colours", tuple(self.colours))
        for name in ("num_frames", "fps", "size", "objects_per_video", "min_appearances", "max_appearances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"synthetic {name} must be a positive integer, got {value!r}")
        if self.size % 56:
            raise ConfigError(
                f"synthetic size must be a multiple of 56 (each region a whole number of 28-px video tokens: "
                f"56 or 112 for the tiny model), got {self.size}"
            )
        unknown = [c for c in self.colours if c not in PALETTE]
        if unknown:
            raise ConfigError(f"synthetic colours {unknown} are unknown; choose from {', '.join(PALETTE)}")
        if len(set(self.colours)) != len(self.colours):
            raise ConfigError(f"synthetic colours repeat: {list(self.colours)}")
        if self.questions not in QUESTION_STYLES:
            raise ConfigError(
                f"synthetic questions must be one of {', '.join(QUESTION_STYLES)}, got {self.questions!r}"
            )
        if self.questions == "multihop" and len(self.colours) < 5:
            raise ConfigError(
                "synthetic colours: need at least 5 for multihop questions (four options besides the "
                "asked-about object)"
            )
        if len(self.colours) < 4:
            raise ConfigError("synthetic colours: need at least 4 (four options)")
        if self.objects_per_video < 2 or self.objects_per_video > len(self.colours):
            raise ConfigError(
                f"synthetic objects_per_video must be in 2..{len(self.colours)} (the number of colours), "
                f"got {self.objects_per_video}"
            )
        if self.min_appearances > self.max_appearances:
            raise ConfigError(
                f"synthetic min_appearances ({self.min_appearances}) exceeds max_appearances "
                f"({self.max_appearances})"
            )
        if not 0.0 <= self.move_prob <= 1.0:
            raise ConfigError(f"synthetic move_prob must be in [0, 1], got {self.move_prob}")
        cell = self.size // 2
        if self.object_px is not None and not (2 <= self.object_px <= cell and self.object_px % 2 == 0):
            raise ConfigError(
                f"synthetic object_px must be even and in 2..{cell} (one region), got {self.object_px}"
            )
        step = self.time_step_s
        if not (
            step > 0 and math.isclose(step * self.fps, round(step * self.fps)) and round(step * self.fps) >= 1
        ):
            raise ConfigError(
                f"synthetic time_step_s * fps must be a whole number of frames, got {step} * {self.fps}"
            )
        for name in (
            "first_appearance_s",
            "min_gap_s",
            "gap_jitter_s",
            "min_visible_s",
            "max_visible_s",
            "hold_s",
            "move_s",
            "min_absence_s",
            "region_margin_s",
            "spatial_window_s",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isclose(value / step, round(value / step))):
                raise ConfigError(
                    f"synthetic {name} must be >= 0 and a multiple of time_step_s ({step}), got {value}"
                )
        if self.min_gap_s < step or self.move_s < step or self.min_visible_s < step:
            raise ConfigError("synthetic min_gap_s, move_s and min_visible_s must be at least one time step")
        if self.min_visible_s > self.max_visible_s:
            raise ConfigError(
                f"synthetic min_visible_s ({self.min_visible_s}) exceeds max_visible_s ({self.max_visible_s})"
            )
        if self.duration_s < self.first_appearance_s + self.min_visible_s + self.min_gap_s:
            raise ConfigError(
                f"synthetic videos of {self.duration_s:g} s are too short for two appearances; "
                "raise num_frames or lower the *_s knobs"
            )

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def object_side(self) -> int:
        """Object square side in pixels (even, so 4:2:0 chroma blocks never straddle its edge)."""
        if self.object_px is not None:
            return self.object_px
        return max(2, round(self.size * 20 / 56 / 2) * 2)

    def ticks(self, seconds: float) -> int:
        """Seconds -> whole time steps."""
        return round(seconds / self.time_step_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "colours": list(self.colours)}


@dataclass(frozen=True)
class Episode:
    """One appearance of one object, from `start_s` (shown) to `end_s` (gone; the video end if it stays).

    region: where it appears. A moving episode slides from `region` to `to_region` (an adjacent region) during
    [move_start_s, move_end_s) and stays there until `end_s`.
    """

    colour: str
    start_s: float
    end_s: float
    region: int
    move_start_s: float | None = None
    move_end_s: float | None = None
    to_region: int | None = None

    @property
    def moves(self) -> bool:
        return self.to_region is not None

    @property
    def final_region(self) -> int:
        return self.to_region if self.to_region is not None else self.region

    def visible_at(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def region_at(self, t: float) -> int | None:
        """The region the object is in at time t; None when it is not visible or between two regions."""
        if not self.visible_at(t):
            return None
        if not self.moves or t < self.move_start_s:
            return self.region
        return self.to_region if t >= self.move_end_s else None

    def still_in(self, region: int, start_s: float, end_s: float) -> bool:
        """Whether the object is visible and motionless in `region` during the whole of [start_s, end_s]."""
        if not (self.start_s <= start_s and end_s < self.end_s):
            return False
        if self.moves and start_s < self.move_end_s and end_s >= self.move_start_s:
            return False
        return self.region_at(start_s) == region


@dataclass(frozen=True)
class Timeline:
    """Everything that happens in one synthetic video; `episodes` sorted by start time (all starts differ)."""

    index: int
    seed: int
    config: TaskConfig = field(repr=False)
    colours: tuple[str, ...]
    episodes: tuple[Episode, ...]

    @property
    def video_id(self) -> str:
        return f"s{self.seed}-{self.index:05d}"

    @property
    def duration_s(self) -> float:
        return self.config.duration_s

    def episodes_of(self, colour: str) -> list[Episode]:
        return [e for e in self.episodes if e.colour == colour]

    def appearance_count(self, colour: str) -> int:
        return sum(e.colour == colour for e in self.episodes)

    def to_dict(self) -> dict:
        """JSON-ready form (the video's content; the config is stored once per dataset)."""
        return {
            "video_id": self.video_id,
            "colours": list(self.colours),
            "episodes": [asdict(e) for e in self.episodes],
        }

    def fingerprint(self, *extra: object) -> str:
        """Short hash of the content plus `extra` render settings: names the video file."""
        text = json.dumps([self.to_dict(), self.config.to_dict(), *extra], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _rng(seed: int, index: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, attempt, 0x5E7])


def _place_episode(
    rng: np.random.Generator,
    config: TaskConfig,
    t: int,
    colours: list[str],
    last_end: dict[str, int],
    occupied: np.ndarray,
) -> Episode | None:
    """Try to place one appearance starting at tick t; marks `occupied` [4, ticks] and `last_end` on success."""
    c = config
    n_ticks = occupied.shape[1]
    hold, move, margin = c.ticks(c.hold_s), c.ticks(c.move_s), c.ticks(c.region_margin_s)
    moving = rng.random() < c.move_prob
    if moving:
        end = t + 2 * hold + move + int(rng.integers(0, c.ticks(c.gap_jitter_s) + 1))
    else:
        end = t + int(rng.integers(c.ticks(c.min_visible_s), c.ticks(c.max_visible_s) + 1))
    end = min(end, n_ticks)
    if moving and end - t < 2 * hold + move:
        moving = False
    free_colours = [x for x in colours if last_end[x] + c.ticks(c.min_absence_s) <= t]
    if not free_colours:
        return None
    colour = free_colours[int(rng.integers(len(free_colours)))]

    def free(region: int, a: int, b: int) -> bool:
        return not occupied[region, max(0, a - margin) : min(n_ticks, b + margin)].any()

    def take(region: int, a: int, b: int) -> None:
        occupied[region, max(0, a - margin) : min(n_ticks, b + margin)] = True

    step = c.time_step_s
    for region in rng.permutation(4).tolist():
        if not moving:
            if free(region, t, end):
                take(region, t, end)
                last_end[colour] = end if end < n_ticks else n_ticks * 10
                return Episode(colour, t * step, end * step, region)
            continue
        move_start = t + hold + int(rng.integers(0, end - t - 2 * hold - move + 1))
        move_end = move_start + move
        for dest in rng.permutation(adjacent_regions(region)).tolist():
            if free(region, t, move_end) and free(dest, move_start, end):
                take(region, t, move_end)
                take(dest, move_start, end)
                last_end[colour] = end if end < n_ticks else n_ticks * 10
                return Episode(colour, t * step, end * step, region, move_start * step, move_end * step, dest)
    return None


def sample_timeline(config: TaskConfig, seed: int, index: int, attempt: int = 0) -> Timeline:
    """One random timeline for video `index` of dataset `seed` (attempt > 0: the next candidate draw).

    Appearances are placed one by one at increasing times (gap min_gap_s + up to gap_jitter_s); one whose
    colour or region cannot be placed under the rules is skipped, so a video may hold fewer than
    `min_appearances` episodes (the caller retries with the next attempt when a question needs more).
    """
    c = config
    rng = _rng(seed, index, attempt)
    picked = rng.choice(len(c.colours), size=c.objects_per_video, replace=False)
    colours = [c.colours[i] for i in sorted(picked.tolist())]
    n_ticks = math.floor(c.duration_s / c.time_step_s + 1e-9)
    occupied = np.zeros((4, n_ticks), dtype=bool)
    last_end = {x: -(10**9) for x in colours}
    wanted = int(rng.integers(c.min_appearances, c.max_appearances + 1))
    t = c.ticks(c.first_appearance_s) + int(rng.integers(0, c.ticks(c.gap_jitter_s) + 1))
    episodes: list[Episode] = []
    while len(episodes) < wanted and t + c.ticks(c.min_visible_s) <= n_ticks:
        episode = _place_episode(rng, c, t, colours, last_end, occupied)
        if episode is not None:
            episodes.append(episode)
        t += c.ticks(c.min_gap_s) + int(rng.integers(0, c.ticks(c.gap_jitter_s) + 1))
    return Timeline(index=index, seed=seed, config=c, colours=tuple(colours), episodes=tuple(episodes))
