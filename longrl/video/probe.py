"""Probe or decode videos in a child process, so a decoder that crashes or hangs cannot take the caller down.

Native decoders (decord, FFmpeg behind PyAV) can segfault, abort or loop forever on corrupt files.
`longrl.video.decode` runs this file as a script in a child interpreter, normally as a long-lived worker
(`longrl.video.worker`) that serves many requests, each under a timeout:

    python longrl/video/probe.py serve  --in-fd R --out-fd W
    python longrl/video/probe.py probe  --backend decord|pyav PATH
    python longrl/video/probe.py decode --backend decord|pyav --indices 0,5,9 --chunk K --out-fd FD PATH

`serve` reads requests from file descriptor R, one JSON line each: the argument list of a one-shot `probe`
or `decode` run (without --out-fd), e.g. ["probe", "--backend", "pyav", "--", "a.mp4"]. For each it writes
to W the frame chunks (decode) and then one answer message (`write_answer`), and waits for the next request;
it exits when R reaches its end (the parent closed it, or died).

The one-shot commands run one request and exit. `probe` prints one JSON line: {"ok": true, "backend",
"num_frames", "fps", "width", "height"} or {"ok": false, "reason": "..."}. It opens the file, reads the frame
count and rate, and decodes the first and the last frame (a file cut short usually fails there). `decode`
streams the requested frames, K at a time, to the inherited file descriptor FD (a pipe the parent reads while
the child decodes, so neither side ever holds more than a few chunks of full-resolution frames), then prints
the same kind of JSON line.

Stream format: each chunk is 4 little-endian int64 (k, height, width, channels), k float64 timestamps in
seconds, then the k * height * width * channels uint8 RGB bytes (`write_chunk` / `CHUNK_HEADER`). An answer
message (serve only) is the header (ANSWER, n, 0, 0) and then n bytes of UTF-8 JSON.

This file imports only the standard library, numpy and the decoder (never torch or the rest of longrl), so the
child starts in a fraction of a second. It is run by path, not with `-m`, for the same reason.
"""

from __future__ import annotations

import os
import sys

# Run by path, this folder is sys.path[0], where its modules (decode.py, inspect.py, ...) would shadow the
# standard library's for every import below (numpy imports `inspect`): drop it before anything else is
# imported. (The parent also passes -P on Python >= 3.11, which never adds it; os and sys are loaded at
# interpreter start, so they cannot be shadowed.)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402


class Unusable(Exception):
    """A reason, in words, why the file cannot be used (reported to the parent as {"ok": false})."""


# decord prefixes messages with "[12:57:04] /path/to/video_reader.cc:151: " (time and C++ source location).
_DECORD_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] [^ ]+:\d+: ")


def describe_error(exc: BaseException) -> str:
    """One line from a decoder exception (decord's messages carry a multi-line C++ trace)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # decord puts the useful line last, after the C++ stack.
    return _DECORD_PREFIX.sub("", lines[-1])


# ----------------------------------------------------------------------------------------------------- decord


# decord's C++ messages -> what they mean for the user.
_DECORD_MEANINGS = [
    ("cannot find video stream", "the file holds no video stream"),
    ("Cannot create buffer source", "its video stream has unreadable codec parameters (corrupt)"),
    ("av_read_frame failed", "reading the file failed (truncated or corrupt)"),
    ("Error reading", "not a video it can read (corrupt, truncated or not a video at all)"),
]


def _open_decord(path: str):
    import decord

    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises RuntimeError / DECORDError with C++ text
        detail = describe_error(exc)
        meaning = next((text for key, text in _DECORD_MEANINGS if key in detail), None)
        if meaning is None:
            raise Unusable(f"decord cannot open the file ({detail})") from exc
        raise Unusable(f"decord cannot open the file: {meaning}") from exc


def probe_decord(path: str) -> dict:
    """Metadata of `path` from decord, after decoding its first and last frame."""
    reader = _open_decord(path)
    num_frames = len(reader)
    if num_frames <= 0:
        raise Unusable("the video stream holds no frames")
    fps = float(reader.get_avg_fps())
    if not math.isfinite(fps) or fps <= 0:
        raise Unusable(f"the video stream has no usable frame rate ({fps})")
    try:
        first = reader[0].asnumpy()
        reader[num_frames - 1].asnumpy()
    except Exception as exc:
        raise Unusable(
            f"decord cannot decode the first and last of its {num_frames} frames; the file is truncated or "
            f"corrupt ({describe_error(exc)})"
        ) from exc
    return {"num_frames": num_frames, "fps": fps, "height": int(first.shape[0]), "width": int(first.shape[1])}


def iter_decord(path: str, indices: Sequence[int], chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames at sorted unique `indices`, `chunk` at a time -> (uint8 [k, H, W, 3], float64 seconds [k]),
    with decord (which seeks to each frame's keyframe as needed)."""
    reader = _open_decord(path)
    wanted = list(indices)
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        frames = reader.get_batch(part).asnumpy()
        # get_frame_timestamp gives [start, end] seconds of each frame; the start is the frame's timestamp.
        stamps = np.asarray(reader.get_frame_timestamp(part), dtype=np.float64).reshape(-1, 2)[:, 0]
        yield np.ascontiguousarray(frames, dtype=np.uint8), stamps


# ------------------------------------------------------------------------------------------------------- PyAV


def _open_pyav(path: str):
    import av

    try:
        container = av.open(path)
    except Exception as exc:
        raise Unusable(f"FFmpeg cannot open the file ({describe_error(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise Unusable("the file holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _stream_origin(stream) -> int:
    """The pts that counts as time zero (the stream's start time, 0 when unknown)."""
    return stream.start_time if stream.start_time is not None else 0


def probe_pyav(path: str) -> dict:
    """Metadata of `path` from PyAV, after decoding its first frame and the frames after its last keyframe."""
    container, stream = _open_pyav(path)
    with container:
        fps = _stream_fps(stream)
        num_frames = stream.frames
        if num_frames <= 0:
            # Containers without a frame count in the header (mkv, webm, ts): count packets, no decoding.
            num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    if not math.isfinite(fps) or fps <= 0:
        raise Unusable("the video stream has no usable frame rate")
    if num_frames <= 0:
        raise Unusable("the video stream holds no frames")
    container, stream = _open_pyav(path)
    with container:
        try:
            first = next(container.decode(stream), None)
        except Exception as exc:
            raise Unusable(f"FFmpeg cannot decode the first frame ({describe_error(exc)})") from exc
        if first is None:
            raise Unusable(f"none of the {num_frames} frames the header lists can be decoded")
        width, height = first.width, first.height
        # The end of the file: seek to the keyframe before the last frame and decode to the end.
        decoded_at_end = 0
        last_pts = None
        try:
            target = _stream_origin(stream) + round((num_frames - 1) / fps / float(stream.time_base))
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                decoded_at_end += 1
                last_pts = frame.pts if frame.pts is not None else last_pts
        except Exception as exc:
            raise Unusable(
                "FFmpeg cannot decode the end of the video; the file is truncated or corrupt "
                f"({describe_error(exc)})"
            ) from exc
        if decoded_at_end == 0:
            raise Unusable("FFmpeg cannot decode the end of the video; the file is truncated or corrupt")
        expected_s = (num_frames - 1) / fps
        last_s = (
            expected_s if last_pts is None else float((last_pts - _stream_origin(stream)) * stream.time_base)
        )
        # Slack for variable frame rate, where (n - 1) / average fps is only close to the last timestamp.
        if last_s < expected_s - max(2.0 / fps, 0.02 * expected_s):
            raise Unusable(
                f"the last decodable frame is at {last_s:.3f} s but the header lists {num_frames} frames "
                f"({expected_s:.3f} s); the file is truncated"
            )
    return {"num_frames": int(num_frames), "fps": fps, "height": int(height), "width": int(width)}


def iter_pyav(path: str, indices: Sequence[int], chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames at sorted unique `indices`, `chunk` at a time -> (uint8 [k, H, W, 3], float64 seconds [k]),
    with PyAV.

    Decodes sequentially from the start and counts frames in presentation order, so frame i is exactly the
    i-th frame whatever the timestamps are (variable frame rate included). The cost grows with the position of
    the last requested frame; decord, the default backend, seeks instead.
    """
    wanted = list(indices)
    frames: list[np.ndarray] = []
    stamps: list[float] = []
    container, stream = _open_pyav(path)
    with container:
        origin = _stream_origin(stream)
        position = 0
        cursor = 0
        decoded = 0
        for frame in container.decode(stream):
            decoded += 1
            while cursor < len(wanted) and wanted[cursor] == position:
                frames.append(frame.to_ndarray(format="rgb24"))
                pts = frame.pts if frame.pts is not None else position
                stamps.append(float((pts - origin) * stream.time_base))
                cursor += 1
                if len(frames) == chunk:
                    yield _stack(frames), np.asarray(stamps, dtype=np.float64)
                    frames, stamps = [], []
            position += 1
            if cursor == len(wanted):
                break
    if cursor < len(wanted):
        raise Unusable(
            f"only {decoded} frames can be decoded but frame {wanted[cursor]} was requested; the file is "
            "truncated or corrupt"
        )
    if frames:
        yield _stack(frames), np.asarray(stamps, dtype=np.float64)


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    if any(f.shape != frames[0].shape for f in frames):
        raise Unusable("the frame size changes within the video stream, which is not supported")
    return np.stack(frames).astype(np.uint8, copy=False)


# ----------------------------------------------------------------------------------------------- frame stream

CHUNK_HEADER = struct.Struct("<4q")  # k, height, width, channels; or ANSWER, length, 0, 0
ANSWER = -1  # first header field of an answer message (a chunk has k >= 1)


def write_chunk(out, frames: np.ndarray, stamps: np.ndarray) -> None:
    """Write one chunk (uint8 [k, H, W, C] frames, float64 [k] seconds) to the binary stream `out`."""
    out.write(CHUNK_HEADER.pack(*frames.shape))
    out.write(np.ascontiguousarray(stamps, dtype="<f8").tobytes())
    out.write(memoryview(np.ascontiguousarray(frames)).cast("B"))


def write_answer(out, answer: dict) -> None:
    """Write the answer to a request (a JSON object) to the binary stream `out`, and flush it."""
    data = json.dumps(answer).encode()
    out.write(CHUNK_HEADER.pack(ANSWER, len(data), 0, 0))
    out.write(data)
    out.flush()


# ------------------------------------------------------------------------------------------------ child entry

PROBERS = {"decord": probe_decord, "pyav": probe_pyav}
ITERATORS = {"decord": iter_decord, "pyav": iter_pyav}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Probe or decode videos (run in a child process).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("probe", "decode"):
        command = commands.add_parser(name)
        command.add_argument("path")
        command.add_argument("--backend", choices=sorted(PROBERS), required=True)
        if name == "decode":
            command.add_argument("--indices", default="", help="comma-separated sorted frame indices")
            command.add_argument("--chunk", type=int, default=64, help="frames per chunk on the stream")
            command.add_argument("--out-fd", type=int, default=-1, help="file descriptor to stream frames to")
    serve = commands.add_parser("serve")
    serve.add_argument("--in-fd", type=int, required=True, help="file descriptor to read requests from")
    serve.add_argument("--out-fd", type=int, required=True, help="file descriptor for frames and answers")
    return parser


def _decode(args: argparse.Namespace, out) -> dict:
    indices = [int(i) for i in args.indices.split(",") if i]
    sent = 0
    for frames, stamps in ITERATORS[args.backend](args.path, indices, max(1, args.chunk)):
        write_chunk(out, frames, stamps)
        out.flush()
        sent += frames.shape[0]
    return {"ok": True, "backend": args.backend, "frames": sent}


def _answer(args: argparse.Namespace, out) -> dict:
    """Run one probe or decode request -> its answer; decoded frames go to the binary stream `out`."""
    try:
        if args.command == "probe":
            return {"ok": True, "backend": args.backend, **PROBERS[args.backend](args.path)}
        return _decode(args, out)
    except Unusable as exc:
        return {"ok": False, "reason": str(exc)}
    except BrokenPipeError:
        return {"ok": False, "reason": "the parent stopped reading the frames"}
    except Exception as exc:  # any other decoder error is still a property of the file
        return {"ok": False, "reason": f"{args.backend} failed ({describe_error(exc)})"}


def serve(in_fd: int, out_fd: int) -> int:
    """Answer requests from `in_fd` (JSON argument lists, one a line) on `out_fd` until `in_fd` ends."""
    # Ctrl-C reaches the whole process group: the parent decides what happens to a request in flight (it
    # kills this worker when it gives up on one), and an idle worker has nothing to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = _parser()
    try:
        with open(in_fd, "rb") as requests, open(out_fd, "wb") as out:
            _serve_requests(parser, requests, out)
    except BrokenPipeError:  # the parent is gone, or gave up on this worker
        pass
    return 0


def _serve_requests(parser: argparse.ArgumentParser, requests, out) -> None:
    for line in requests:
        try:
            argv = json.loads(line)
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError("a request is a list of strings")
            args = parser.parse_args(argv)
            answer = (
                {"ok": False, "reason": "serve cannot be requested"}
                if args.command == "serve"
                else _answer(args, out)
            )
        except (ValueError, SystemExit) as exc:  # argparse exits on bad arguments: a bug in the parent
            answer = {"ok": False, "reason": f"malformed request {line[:200]!r} ({exc})"}
        write_answer(out, answer)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args.in_fd, args.out_fd)
    if args.command == "probe":
        result = _answer(args, None)
    else:
        try:
            # The parent owns the read end; closing ours (with the file) at the end is its end-of-stream.
            with open(args.out_fd, "wb", closefd=True) as out:
                result = _answer(args, out)
        except BrokenPipeError:  # flushing at close
            result = {"ok": False, "reason": "the parent stopped reading the frames"}
        except OSError as exc:  # no such descriptor
            result = {"ok": False, "reason": f"cannot write the frames to descriptor {args.out_fd} ({exc})"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
