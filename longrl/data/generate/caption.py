"""Stage 3, caption: every clip described by the captioner backend from a few of its frames.

Per video, the frames of its uncaptioned clips are decoded up to CLIPS_PER_DECODE clips per pass (in a child
process: a decoder crash cannot take the run down), `--caption-frames` per clip, uniformly over the clip,
scaled while decoding so their longer side is at most `--caption-image-size`. The requests run on `--concurrency` threads; frames are decoded
lazily, so only a few clips' frames are held at once.

Record: {"id": clip id, "video_id", "start_s", "end_s", "caption", "frame_times_s", "backend"}.
Rejections: video_unreadable (the frames cannot be decoded), backend_error (retried by the next run),
empty_caption.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby

import numpy as np

from longrl.data.generate.context import RunContext, StageStats, run_bounded
from longrl.data.generate.prompts import CAPTION_SYSTEM, caption_prompt
from longrl.errors import VideoError

# Clips decoded together (one child process); bounds the frames held at once for long videos.
CLIPS_PER_DECODE = 32


@dataclass
class ClipFrames:
    """A clip to caption and its frames: uint8 [k, h, w, 3] RGB, and their timestamps in seconds [k]."""

    clip: dict
    frames: np.ndarray
    times_s: list[float]


def fit_frames(frames: np.ndarray, max_side: int) -> np.ndarray:
    """Scale frames uint8 [k, H, W, 3] down so that max(H, W) <= max_side (aspect kept); as they are if smaller."""
    height, width = frames.shape[1:3]
    scale = max_side / max(height, width)
    if scale >= 1:
        return frames
    from PIL import Image

    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


def decode_clip_frames(
    path: str, clips: list[dict], frames_per_clip: int, max_side: int, backend: str
) -> list[ClipFrames]:
    """The frames of `clips` (all of one video) in one decode; VideoError when the video cannot be read."""
    from longrl.video import SamplingConfig, decode_frames, plan_frames, probe_video

    sampling = SamplingConfig(num_frames=frames_per_clip, frame_multiple=1, on_short="cap")
    info = probe_video(path, backend)
    plans = []
    for clip in clips:
        try:
            plans.append(plan_frames(info.num_frames, info.fps, sampling, clip["start_s"], clip["end_s"]))
        except ValueError as err:
            raise VideoError(f"{path}: clip {clip['id']}: {err}") from None
    indices = np.concatenate([p.indices for p in plans])
    # Scaled down chunk by chunk as they are decoded: full-resolution frames never pile up.
    decoded = decode_frames(
        path, indices, backend, info=info, transform=lambda f, _n: fit_frames(f, max_side)
    )
    out, offset = [], 0
    for clip, plan in zip(clips, plans, strict=True):
        n = plan.indices.size
        frames = np.asarray(decoded.frames[offset : offset + n])
        times = [float(t) for t in decoded.timestamps_s[offset : offset + n]]
        out.append(ClipFrames(clip, frames, times))
        offset += n
    return out


def run_caption(ctx: RunContext, stats: StageStats) -> None:
    """Caption every clip that has no caption (nor a final rejection) yet."""
    from longrl.llm import BackendRequestError, system_message, user_message

    cfg = ctx.cfg
    records = ctx.log("caption")
    videos = ctx.log("scan")
    clips = ctx.log("segment").values()
    stats.total = len(clips)
    # Grouped by video (one decode per video), in time order.
    pending = sorted(
        (c for c in clips if not ctx.is_done("caption", c["id"])), key=lambda c: (c["video_id"], c["index"])
    )
    stats.skipped = stats.total - len(pending)
    if not pending:
        return
    backend = ctx.backend("captioner")

    with ctx.task("caption", len(pending)) as advance:

        def frames_to_caption() -> Iterator[ClipFrames]:
            for vid, clips_of_video in groupby(pending, key=lambda c: c["video_id"]):
                clips_of_video = list(clips_of_video)
                path = str(ctx.video_root / videos.get(vid)["path"])
                for start in range(0, len(clips_of_video), CLIPS_PER_DECODE):
                    group = clips_of_video[start : start + CLIPS_PER_DECODE]
                    try:
                        decoded = decode_clip_frames(
                            path, group, cfg.caption_frames, cfg.caption_image_size, cfg.video_backend
                        )
                    except VideoError as err:
                        for clip in group:
                            ctx.reject(stats, clip["id"], "video_unreadable", str(err))
                            advance(1)
                        continue
                    yield from decoded

        def work(item: ClipFrames) -> str | tuple[str, str]:
            clip = item.clip
            messages = [
                system_message(CAPTION_SYSTEM),
                user_message(caption_prompt(clip["start_s"], clip["end_s"], item.times_s), list(item.frames)),
            ]
            try:
                text = backend.chat(
                    messages, max_tokens=cfg.caption_max_tokens, temperature=0.0, seed=cfg.seed
                )
            except BackendRequestError as err:
                return ("backend_error", str(err))
            text = " ".join(text.split())
            return text if text else ("empty_caption", "the captioner returned no text")

        def on_done(item: ClipFrames, result: str | tuple[str, str]) -> None:
            clip = item.clip
            if isinstance(result, tuple):
                ctx.reject(stats, clip["id"], *result)
            else:
                records.append(
                    {
                        "id": clip["id"],
                        "video_id": clip["video_id"],
                        "start_s": clip["start_s"],
                        "end_s": clip["end_s"],
                        "caption": result,
                        "frame_times_s": [round(t, 3) for t in item.times_s],
                        "backend": backend.name,
                    }
                )
                stats.done += 1
            advance(1)

        run_bounded(frames_to_caption(), work, on_done, cfg.concurrency)
