"""Which frames to decode: N uniform frames or a rate in frames per second, and fixed-length clips.

Pure arithmetic on frame counts and timestamps (no decoding, no I/O), so every rule here is testable by hand.

Rules (all documented in `SamplingConfig`):
- Frame-center sampling: a span of F frames is cut into n equal parts and the frame under the center of each
  part is taken: index_i = first + floor((i + 1/2) * F / n), computed in integers so it is exact. When n > F
  some frames repeat (each still in time order).
- The count is a multiple of `frame_multiple` (Qwen2.5-VL's temporal patch, 2), so the patchifier never has to
  pad: in "num_frames" mode an odd request is rounded up (7 -> 8 distinct positions); in "fps" mode the count
  is rounded down (the rate is a budget) but never below `frame_multiple`.
- A video too short for the request (`TooFewFrames`, see `on_short`): "repeat" (default) keeps the requested
  count and repeats frames, so the number of video tokens depends only on the config; "cap" takes every frame
  up to the largest multiple of `frame_multiple` (repeating only for a 1-frame span); "error" raises.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from longrl.errors import ConfigError

ON_SHORT = ("repeat", "cap", "error")
DEFAULT_CLIP_S = 10.0
# Two times closer than this are the same instant (guards float error in duration * fps and clip bounds).
_EPS_S = 1e-6


class TooFewFrames(ValueError):
    """The span holds fewer frames than requested and `on_short="error"`."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick frames. Exactly one of `num_frames` and `fps` is set.

    num_frames: take this many frames uniformly over the span (rounded up to a multiple of `frame_multiple`).
    fps: take floor(duration_s * fps) frames uniformly over the span, clamped to [min_frames, max_frames] and
        to the number of frames in the span, then rounded down to a multiple of `frame_multiple`.
    max_frames / min_frames: bounds for "fps" mode.
    frame_multiple: the count is a multiple of this (Qwen2.5-VL's temporal patch size, 2).
    on_short: what to do when the span has fewer frames than the count: "repeat" | "cap" | "error".
    A bad value raises `longrl.errors.ConfigError` naming the field.
    """

    num_frames: int | None = None
    fps: float | None = None
    max_frames: int = 768
    min_frames: int = 2
    frame_multiple: int = 2
    on_short: str = "repeat"

    def __post_init__(self) -> None:
        """Check every field; ConfigError naming the field and the value (these come from flags and configs)."""
        for name in ("num_frames", "max_frames", "min_frames", "frame_multiple"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ConfigError(f"sampling {name} must be an integer, got {value!r}")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, numbers.Real)):
            raise ConfigError(f"sampling fps must be a number, got {self.fps!r}")
        if (self.num_frames is None) == (self.fps is None):
            raise ConfigError(
                "sampling needs exactly one of num_frames and fps, got "
                f"num_frames={self.num_frames!r}, fps={self.fps!r}"
            )
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"sampling num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"sampling fps must be a positive number, got {self.fps}")
        if self.frame_multiple < 1:
            raise ConfigError(f"sampling frame_multiple must be >= 1, got {self.frame_multiple}")
        if self.min_frames < 1:
            raise ConfigError(f"sampling min_frames must be >= 1, got {self.min_frames}")
        if self.max_frames < max(self.min_frames, self.frame_multiple):
            raise ConfigError(
                f"sampling max_frames must be >= min_frames ({self.min_frames}) and >= frame_multiple "
                f"({self.frame_multiple}), got {self.max_frames}"
            )
        if self.on_short not in ON_SHORT:
            raise ConfigError(
                f"sampling on_short must be one of {', '.join(ON_SHORT)}, got {self.on_short!r}"
            )


@dataclass(frozen=True)
class FramePlan:
    """The frames chosen from one span [start_s, end_s) of a video.

    indices: int64 [n], frame numbers in presentation order (non-decreasing; repeats only for short spans).
    timestamps_s: float64 [n], nominal timestamps index / video_fps (the decoder reports the exact ones).
    sampled_fps: n / (end_s - start_s), the rate of the sampled frames (Qwen's second_per_grid_ts = 2 / this).
    """

    indices: np.ndarray
    timestamps_s: np.ndarray
    start_s: float
    end_s: float
    sampled_fps: float


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def round_down(n: int, multiple: int) -> int:
    """The largest multiple of `multiple` that is <= n."""
    return n // multiple * multiple


def uniform_indices(first: int, stop: int, n: int) -> np.ndarray:
    """Frame-center sampling of n frames from the frames [first, stop) -> int64 [n].

    index_i = first + floor((2 i + 1) * F / (2 n)) with F = stop - first: the frame under the center of the
    i-th of n equal parts. Exact integer arithmetic; repeats frames when n > F.
    """
    count = stop - first
    if count < 1 or n < 1:
        raise ValueError(f"need a non-empty span and n >= 1, got frames [{first}, {stop}) and n={n}")
    i = np.arange(n, dtype=np.int64)
    return first + (2 * i + 1) * count // (2 * n)


def frame_span(num_frames: int, video_fps: float, start_s: float, end_s: float) -> tuple[int, int]:
    """The frames [first, stop) whose nominal timestamps index / video_fps lie in [start_s, end_s)."""
    first = max(0, math.ceil(start_s * video_fps - _EPS_S * video_fps))
    stop = min(num_frames, math.ceil(end_s * video_fps - _EPS_S * video_fps))
    return first, stop


def frame_count(config: SamplingConfig, span_frames: int, span_s: float) -> int:
    """How many frames `config` takes from a span of `span_frames` frames lasting `span_s` seconds.

    Raises TooFewFrames when the span is too short and `config.on_short == "error"`.
    """
    m = config.frame_multiple
    if config.num_frames is not None:
        wanted = round_up(config.num_frames, m)
        short = wanted > span_frames
        capped = max(m, round_down(span_frames, m))
    else:
        by_rate = math.floor(span_s * config.fps + _EPS_S)
        wanted = min(max(by_rate, config.min_frames), config.max_frames, span_frames)
        wanted = max(m, round_down(wanted, m))
        # In fps mode the count is already capped at the span: only a span below one temporal patch is short.
        short = wanted > span_frames
        capped = wanted
    if not short:
        return wanted
    if config.on_short == "error":
        raise TooFewFrames(f"needs {wanted} frames but the span holds only {span_frames}")
    return wanted if config.on_short == "repeat" else capped


def plan_frames(
    num_frames: int,
    video_fps: float,
    config: SamplingConfig,
    start_s: float = 0.0,
    end_s: float | None = None,
) -> FramePlan:
    """Choose frames from the span [start_s, end_s) of a video with `num_frames` frames at `video_fps`.

    end_s=None means the end of the video (num_frames / video_fps). Raises TooFewFrames (see `on_short`) and
    ValueError for a span that holds no frame.
    """
    if num_frames < 1 or not video_fps > 0:
        raise ValueError(f"need num_frames >= 1 and video_fps > 0, got {num_frames} and {video_fps}")
    duration_s = num_frames / video_fps
    end_s = duration_s if end_s is None else min(end_s, duration_s)
    first, stop = frame_span(num_frames, video_fps, start_s, end_s)
    if stop <= first:
        raise ValueError(f"the span [{start_s}, {end_s}) s holds no frame of a {duration_s:.3f} s video")
    n = frame_count(config, stop - first, end_s - start_s)
    indices = uniform_indices(first, stop, n)
    return FramePlan(
        indices=indices,
        timestamps_s=indices / video_fps,
        start_s=float(start_s),
        end_s=float(end_s),
        sampled_fps=n / (end_s - start_s),
    )


def segment_clips(duration_s: float, clip_s: float = DEFAULT_CLIP_S) -> list[tuple[float, float]]:
    """Cut [0, duration_s) into consecutive clips of clip_s seconds -> [(start_s, end_s), ...].

    The last clip is shorter when clip_s does not divide the duration; a remainder under a microsecond (float
    error) does not make a clip of its own. A video shorter than clip_s is one clip.
    """
    if not clip_s > 0:
        raise ValueError(f"clip_s must be > 0, got {clip_s}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    count = max(1, math.ceil(duration_s / clip_s - _EPS_S / clip_s))
    return [(k * clip_s, (k + 1) * clip_s if k + 1 < count else duration_s) for k in range(count)]


def plan_clips(
    num_frames: int, video_fps: float, config: SamplingConfig, clip_s: float = DEFAULT_CLIP_S
) -> list[FramePlan]:
    """One `plan_frames` per clip of `segment_clips(num_frames / video_fps, clip_s)`.

    A clip that holds no frame (possible only when clip_s < 1 / video_fps) is skipped.
    """
    plans = []
    for start_s, end_s in segment_clips(num_frames / video_fps, clip_s):
        first, stop = frame_span(num_frames, video_fps, start_s, end_s)
        if stop > first:
            plans.append(plan_frames(num_frames, video_fps, config, start_s, end_s))
    return plans
