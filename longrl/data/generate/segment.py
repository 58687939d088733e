"""Stage 2, segment: cut each scanned video into clips of `--clip-seconds` (time ranges; nothing re-encoded).

Record per clip: {"id": "<video id>/c0003", "video_id", "index", "start_s", "end_s"}. The last clip of a
video is shorter when the clip length does not divide the duration; a clip that would hold no frame (only
possible for clips shorter than a frame) is left out.
"""

from __future__ import annotations

from longrl.data.generate.context import RunContext, StageStats
from longrl.data.generate.records import clip_id


def clips_of(video: dict, clip_seconds: float) -> list[dict]:
    """The clip records of one scanned video record."""
    from longrl.video.sampling import frame_span, segment_clips

    out = []
    for start_s, end_s in segment_clips(video["duration_s"], clip_seconds):
        first, stop = frame_span(video["num_frames"], video["fps"], start_s, end_s)
        if stop > first:
            index = len(out)
            out.append(
                {
                    "id": clip_id(video["id"], index),
                    "video_id": video["id"],
                    "index": index,
                    "start_s": round(start_s, 6),
                    "end_s": round(end_s, 6),
                }
            )
    return out


def run_segment(ctx: RunContext, stats: StageStats) -> None:
    """Write the clips of every scanned video that are not written yet."""
    records = ctx.log("segment")
    videos = ctx.log("scan").values()
    stats.total = len(videos)
    with ctx.task("segment", len(videos)) as advance:
        for video in videos:
            missing = [c for c in clips_of(video, ctx.cfg.clip_seconds) if c["id"] not in records]
            if not missing:
                stats.skipped += 1
            else:
                for clip in missing:
                    records.append(clip)
                stats.done += 1
            advance(1)
