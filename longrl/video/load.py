"""Probe + sample + decode in one call: what the data, training and eval code use to read a video."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from longrl.errors import VideoError
from longrl.video.decode import DEFAULT_BACKEND, FrameTransform, VideoInfo, decode_frames, probe_video
from longrl.video.sampling import (
    DEFAULT_CLIP_S,
    FramePlan,
    SamplingConfig,
    TooFewFrames,
    plan_clips,
    plan_frames,
)


@dataclass(frozen=True)
class SampledVideo:
    """Frames sampled from one span [start_s, end_s) of a video.

    frames: uint8 [n, H, W, 3] RGB (or the rows of the `transform` given to `load_video`, e.g. frames already
    resized for the model). indices: int64 [n] frame numbers. timestamps_s: float64 [n], the decoder's
    presentation time of each frame (use these in prompts). sampled_fps: n / (end_s - start_s), for Qwen's
    second_per_grid_ts.
    """

    info: VideoInfo
    frames: Any
    indices: np.ndarray
    timestamps_s: np.ndarray
    start_s: float
    end_s: float
    sampled_fps: float

    @property
    def path(self) -> str:
        return self.info.path


def _plan(info: VideoInfo, sampling: SamplingConfig, start_s: float, end_s: float | None) -> FramePlan:
    try:
        return plan_frames(info.num_frames, info.fps, sampling, start_s, end_s)
    except TooFewFrames as exc:
        raise VideoError(f"{info.path}: too few frames: {exc} (on_short='error')") from None
    except ValueError as exc:
        raise VideoError(f"{info.path}: {exc}") from None


def load_video(
    path: str | os.PathLike,
    sampling: SamplingConfig,
    backend: str = DEFAULT_BACKEND,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    isolate: bool = True,
    transform: FrameTransform | None = None,
) -> SampledVideo:
    """Sample frames from [start_s, end_s) (default: the whole video) of the video at `path` and decode them.

    `transform(frames, num_frames)` is applied per chunk while decoding (see `decode_frames`); use it to
    resize frames as they arrive, so a long video is never held at full resolution. Raises VideoError naming
    the file and the reason (see `longrl.video.decode`), including a video shorter than the request when
    `sampling.on_short == "error"`.
    """
    info = probe_video(path, backend)
    plan = _plan(info, sampling, start_s, end_s)
    decoded = decode_frames(info.path, plan.indices, backend, info=info, isolate=isolate, transform=transform)
    return SampledVideo(
        info=info,
        frames=decoded.frames,
        indices=decoded.indices,
        timestamps_s=decoded.timestamps_s,
        start_s=plan.start_s,
        end_s=plan.end_s,
        sampled_fps=plan.sampled_fps,
    )


def load_clips(
    path: str | os.PathLike,
    sampling: SamplingConfig,
    clip_s: float = DEFAULT_CLIP_S,
    backend: str = DEFAULT_BACKEND,
    *,
    isolate: bool = True,
) -> list[SampledVideo]:
    """Cut the video at `path` into clips of `clip_s` seconds (the last one shorter) and sample each with
    `sampling`.

    All clips' frames are decoded in one pass. Returns one SampledVideo per clip, in time order.
    """
    info = probe_video(path, backend)
    try:
        plans = plan_clips(info.num_frames, info.fps, sampling, clip_s)
    except TooFewFrames as exc:
        raise VideoError(f"{info.path}: too few frames in a clip: {exc} (on_short='error')") from None
    indices = np.concatenate([p.indices for p in plans])
    decoded = decode_frames(info.path, indices, backend, info=info, isolate=isolate)
    clips, offset = [], 0
    for plan in plans:
        n = plan.indices.size
        clips.append(
            SampledVideo(
                info=info,
                frames=decoded.frames[offset : offset + n],
                indices=decoded.indices[offset : offset + n],
                timestamps_s=decoded.timestamps_s[offset : offset + n],
                start_s=plan.start_s,
                end_s=plan.end_s,
                sampled_fps=plan.sampled_fps,
            )
        )
        offset += n
    return clips
