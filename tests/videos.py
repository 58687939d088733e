"""Synthetic test videos with known content per frame, and broken files for the error tests.

Every frame carries its own index: the top half of the frame is 8 vertical bars, bar k white when bit k of the
frame index is set and black otherwise (bars are 8 px wide and 24 px tall, far larger than H.264's chroma
subsampling and blocking artefacts). The bottom half is a solid colour that also depends on the index, so
tests can check colours after decoding. `frame_index_of` reads the index back from a decoded frame.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH = 64
HEIGHT = 48
NUM_BITS = 8  # frame indices up to 255 are encoded


def pick_codec() -> str:
    """libx264 when this PyAV build has it (H.264, with B-frames), else mpeg4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def bottom_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of the bottom half of frame `index` (values kept in 40..215, well inside video range)."""
    return (40 + (index * 37) % 176, 40 + (index * 71) % 176, 40 + (index * 113) % 176)


def make_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The uint8 RGB frame [height, width, 3] written for frame `index`."""
    if width % NUM_BITS or height % 2:
        raise ValueError("width must be a multiple of 8 and height even")
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    bar = width // NUM_BITS
    for bit in range(NUM_BITS):
        if (index >> bit) & 1:
            frame[: height // 2, bit * bar : (bit + 1) * bar] = 255
    frame[height // 2 :] = bottom_colour(index)
    return frame


def frame_index_of(frame: np.ndarray) -> int:
    """The frame index encoded in a decoded frame [H, W, 3] (bar means read against a 128 threshold).

    Only the middle of each bar is read, away from its edges where compression blurs.
    """
    height, width = frame.shape[:2]
    bar = width // NUM_BITS
    top = frame[2 : height // 2 - 2].astype(np.float64).mean(axis=2)
    index = 0
    for bit in range(NUM_BITS):
        if top[:, bit * bar + 2 : (bit + 1) * bar - 2].mean() > 128:
            index |= 1 << bit
    return index


def colour_of(frame: np.ndarray) -> np.ndarray:
    """Mean RGB of the middle of the bottom half of a decoded frame [H, W, 3] -> float64 [3]."""
    height, width = frame.shape[:2]
    return frame[height // 2 + 4 : height - 4, 4 : width - 4].reshape(-1, 3).astype(np.float64).mean(axis=0)


def write_video(
    path: str | os.PathLike,
    num_frames: int,
    fps: int,
    width: int = WIDTH,
    height: int = HEIGHT,
    codec: str | None = None,
    faststart: bool = False,
) -> Path:
    """Write `num_frames` frames of `make_frame(i)` at a constant `fps` into an .mp4 at `path`.

    Frame i has pts i in time base 1/fps, so its timestamp is exactly i / fps seconds. `faststart` puts the
    index (moov) at the front of the file, so a truncated copy still opens and only loses frame data.
    """
    path = Path(path)
    codec = codec or pick_codec()
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            # Near-lossless quality so colours survive; keyframe every 8 frames so seeking is exercised.
            stream.options = {"crf": "12", "g": "8", "bf": "2"}
        else:
            stream.bit_rate = 4_000_000
            stream.options = {"g": "8", "qscale": "2"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, width, height), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated(src: str | os.PathLike, dst: str | os.PathLike, keep_fraction: float) -> Path:
    """Copy the first `keep_fraction` of the bytes of `src` to `dst` (a download cut short)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def write_random_bytes(path: str | os.PathLike, num_bytes: int = 20_000, seed: int = 0) -> Path:
    """A file of random bytes (any name, typically *.mp4)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes())
    return path


def write_text(path: str | os.PathLike) -> Path:
    """A text file (typically named *.mp4)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 50)
    return path


def write_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> Path:
    """A valid .mp4 holding one AAC audio stream and no video stream."""
    path = Path(path)
    rate = 16000
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = int(rate * seconds)
        t = np.arange(samples, dtype=np.float32) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        chunk = 1024
        for start in range(0, samples - chunk + 1, chunk):
            frame = av.AudioFrame.from_ndarray(tone[:, start : start + chunk], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt_payload(src: str | os.PathLike, dst: str | os.PathLike, seed: int = 0) -> Path:
    """Copy `src` with the middle 80% of its bytes overwritten by random bytes (container header kept)."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    lo, hi = len(data) // 10, len(data) * 9 // 10
    data[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def _mp4_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level MP4 boxes of `data` -> [(type, start offset, size)] (32-bit and 64-bit sizes)."""
    boxes = []
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        elif size == 0:
            size = len(data) - pos
        boxes.append((kind, pos, size))
        pos += size
    return boxes


def write_undecodable(src: str | os.PathLike, dst: str | os.PathLike, seed: int = 0) -> Path:
    """Copy the .mp4 `src` with its media data (the mdat box payload) replaced by random bytes.

    The container, its index and codec header stay valid, so the file opens and lists all its frames, but
    no frame can be decoded.
    """
    data = bytearray(Path(src).read_bytes())
    (_, start, size), *_ = [box for box in _mp4_boxes(bytes(data)) if box[0] == "mdat"]
    header = 16 if int.from_bytes(data[start : start + 4], "big") == 1 else 8
    rng = np.random.default_rng(seed)
    data[start + header : start + size] = rng.integers(0, 256, size - header, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def _find_box(data: bytes, path: list[str]) -> tuple[int, int]:
    """(start offset, size) of the nested box at `path`, e.g. ["moov", "trak", ..., "stbl", "stts"]."""
    start, end = 0, len(data)
    for depth, kind in enumerate(path):
        boxes = [(s, n) for k, s, n in _mp4_boxes(data[start:end]) if k == kind]
        if not boxes:
            raise ValueError(f"no {'/'.join(path[: depth + 1])} box")
        offset, size = boxes[0]
        start, end = start + offset, start + offset + size
        if depth + 1 < len(path):
            start += 8  # step inside the container box
    return start, end - start


def write_bad_sample_table(src: str | os.PathLike, dst: str | os.PathLike, entry_count: int = 132) -> Path:
    """Copy the .mp4 `src` with the entry count of its time-to-sample table (stts) set to `entry_count`.

    The table really has one entry, so a reader that trusts the count reads the following boxes as sample
    counts and sees billions of frames. decord 0.6.0 then dies with std::bad_alloc (SIGABRT, the whole
    process); FFmpeg reports an absurd frame count. Found by fuzzing write_video output.
    """
    data = bytearray(Path(src).read_bytes())
    start, _ = _find_box(bytes(data), ["moov", "trak", "mdia", "minf", "stbl", "stts"])
    # stts: size (4), type (4), version + flags (4), entry count (4), entries.
    data[start + 12 : start + 16] = entry_count.to_bytes(4, "big")
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst
