"""Timeline -> RGB frames -> .mp4 (PyAV; H.264 near-lossless when available, else MPEG-4 at high quality).

Frames are flat: a dark background (one tint per region by default) and one square per visible object, centred in its region (a quarter of
the frame) or on the straight path between two regions while it moves. Square corners sit on even pixels,
so 4:2:0 chroma blocks never mix an object with the background.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from longrl.data.synthetic.timeline import BACKGROUND, PALETTE, REGION_TINTS, Episode, TaskConfig, Timeline
from longrl.errors import VideoError


def pick_codec() -> str:
    """libx264 when this PyAV build has it, else mpeg4 (every FFmpeg build has it)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def region_origin(region: int, config: TaskConfig) -> tuple[int, int]:
    """(y, x) of the top-left pixel of an object square centred in `region`."""
    cell = config.size // 2
    inset = (cell - config.object_side) // 2
    row, col = divmod(region, 2)
    return row * cell + inset, col * cell + inset


def _even(value: float) -> int:
    return int(round(value / 2.0)) * 2


def _paint_episode(frames: np.ndarray, episode: Episode, config: TaskConfig) -> None:
    fps, side = config.fps, config.object_side
    colour = np.array(PALETTE[episode.colour], dtype=np.uint8)
    first = round(episode.start_s * fps)
    stop = min(frames.shape[0], round(episode.end_s * fps))
    if not episode.moves:
        y, x = region_origin(episode.region, config)
        frames[first:stop, y : y + side, x : x + side] = colour
        return
    move_first, move_stop = round(episode.move_start_s * fps), round(episode.move_end_s * fps)
    (y0, x0), (y1, x1) = region_origin(episode.region, config), region_origin(episode.to_region, config)
    frames[first:move_first, y0 : y0 + side, x0 : x0 + side] = colour
    for f in range(move_first, min(move_stop, stop)):
        # Linear slide; frame move_first is still at the start, frame move_stop is at the destination.
        alpha = (f - move_first) / (move_stop - move_first)
        y, x = _even(y0 + alpha * (y1 - y0)), _even(x0 + alpha * (x1 - x0))
        frames[f, y : y + side, x : x + side] = colour
    frames[move_stop:stop, y1 : y1 + side, x1 : x1 + side] = colour


def render_frames(timeline: Timeline) -> np.ndarray:
    """All frames of the video: uint8 [num_frames, size, size, 3] RGB; frame i shows time i / fps."""
    c = timeline.config
    frames = np.empty((c.num_frames, c.size, c.size, 3), dtype=np.uint8)
    cell = c.size // 2
    for region in range(4):
        row, col = divmod(region, 2)
        tint = REGION_TINTS[region] if c.tinted_regions else BACKGROUND
        frames[:, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = np.array(
            tint, dtype=np.uint8
        )
    for episode in timeline.episodes:
        _paint_episode(frames, episode, c)
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, codec: str | None = None) -> Path:
    """Encode uint8 frames [T, H, W, 3] at a constant `fps` into an .mp4 at `path`, atomically.

    Frame i has pts i in time base 1/fps (timestamp i / fps). The file is written beside `path` under a
    temporary name and renamed, so `path` is either absent or complete. Raises VideoError when encoding fails.
    """
    path = Path(path)
    codec = codec or pick_codec()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.height, stream.width = frames.shape[1], frames.shape[2]
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, fps)
            if codec == "libx264":
                # Near-lossless, one thread: flat colours survive, and the same input gives the same bytes.
                stream.options = {"crf": "12", "preset": "ultrafast", "threads": "1", "g": "32"}
            else:
                stream.bit_rate = 2_000_000
                stream.options = {"qscale": "2", "g": "32"}
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"cannot write synthetic video {path}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
