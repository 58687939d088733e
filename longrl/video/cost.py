"""What a video costs the model before anything is decoded: probe, frame plan, resized size, patch grid and
visual tokens (`longrl video inspect`). Only the probe touches the file."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from longrl.video.decode import DEFAULT_BACKEND, VideoInfo, probe_video
from longrl.video.qwen_layout import QwenVideoConfig, target_size
from longrl.video.sampling import SamplingConfig, plan_frames


@dataclass(frozen=True)
class VideoCost:
    """One video under one sampling config and pixel budget.

    frames: sampled frames; sampled_fps: their rate; first_s / last_s: first and last frame timestamps;
    resized: (height, width) of every frame after smart resize; grid_thw: patch grid (t, h, w);
    visual_tokens: vision embeddings = video-pad tokens in the prompt (t*h*w / merge_size**2).
    """

    info: VideoInfo
    frames: int
    sampled_fps: float
    first_s: float
    last_s: float
    resized: tuple[int, int]
    grid_thw: tuple[int, int, int]
    visual_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_video(
    path: str | os.PathLike,
    sampling: SamplingConfig,
    config: QwenVideoConfig | None = None,
    backend: str = DEFAULT_BACKEND,
) -> VideoCost:
    """Probe `path` (crash/hang safe) and compute its frame plan and Qwen2.5-VL token cost.

    Raises VideoError for an unusable file, ConfigError for a bad backend name, TooFewFrames when the video is
    shorter than the plan and sampling.on_short == "error".
    """
    config = config or QwenVideoConfig()
    info = probe_video(path, backend)
    plan = plan_frames(info.num_frames, info.fps, sampling)
    n = len(plan.indices)
    height, width = target_size(n, info.height, info.width, config)
    grid = (n // config.temporal_patch_size, height // config.patch_size, width // config.patch_size)
    return VideoCost(
        info=info,
        frames=n,
        sampled_fps=plan.sampled_fps,
        first_s=float(plan.timestamps_s[0]),
        last_s=float(plan.timestamps_s[-1]),
        resized=(height, width),
        grid_thw=grid,
        visual_tokens=grid[0] * grid[1] * grid[2] // config.merge_size**2,
    )
