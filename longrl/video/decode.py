"""Open, probe and decode videos with decord (default) or PyAV, without ever crashing or hanging the caller.

Backends: "decord" | "pyav" | "auto" (decord when it is installed and opens the file, else PyAV; and PyAV
again when decord opened the file but then fails to decode the frames asked for).

Safety: native decoders can segfault or hang on corrupt input, and no Python `try` catches a segfault. So:
1. `probe_video` checks the path in this process (missing, directory, empty, unreadable), then opens the file
   in a child interpreter (`longrl/video/probe.py`) with a timeout: it reads frame count, rate and size and
   decodes the first and last frame. A crash or timeout there becomes a `VideoError`. Results and definite
   failures are cached per (path, size, mtime, backend), so each file is probed once per process; a timeout
   is not cached (on a busy machine it says little about the file), so the next call probes again.
2. `decode_frames` decodes in a child process too (`isolate=True`, the default). A file can pass the probe
   and still hang the decoder later (seen with decord on files with damaged sample tables, at random), so
   only this keeps the guarantee. (Seen here, decord 0.6.0: an mp4 whose stts entry count is wrong makes
   decord abort the whole process with std::bad_alloc; see tests/videos.py:write_bad_sample_table.)
   `isolate=False` decodes in-process, for inputs you trust; Python-level decoder errors still become
   `VideoError`.
The child is a long-lived worker (`longrl.video.worker`) that serves probe after probe and decode after
decode, so a file costs no interpreter start. A request that crashes the worker or runs past its timeout
fails that file only (the worker is killed; the next request starts a new one); each thread in flight gets a
worker of its own, a forked process starts its own, and all are stopped at exit.

Memory: frames travel from the child through a pipe, a chunk of about `CHUNK_BYTES` at a time, straight into
the result array (no temporary file, no second copy). An optional per-frame `transform` (e.g. the model's
resize, see `longrl.video.qwen_layout.FrameResizer`) runs on each chunk as it arrives, so a long video is
never held at full resolution: peak memory is the transformed frames plus a few chunks.

Every failure is a `longrl.errors.VideoError` whose message starts with the path and says why.
Frames are numpy uint8 [N, H, W, 3] RGB (without a transform); convert with `torch.from_numpy` (no copy).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import signal
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longrl.errors import BackendError, ConfigError, VideoError
from longrl.video import probe as _probe
from longrl.video import worker as _worker

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "auto")
DEFAULT_BACKEND = "auto"
PROBE_TIMEOUT_S = 60.0
# Decoding in the child may take a while for long videos (PyAV decodes sequentially): the limit grows with
# length.
DECODE_TIMEOUT_BASE_S = 60.0
DECODE_TIMEOUT_PER_VIDEO_S = 2.0

_PROBE_SCRIPT = str(Path(_probe.__file__).resolve())
_MODULE_OF = {"decord": "decord", "pyav": "av"}
_CACHE_SIZE = 8192
# Frames per chunk on the child's stream (and per transform call): about this many bytes of decoded frames.
CHUNK_BYTES = 64 << 20

# transform(frames, num_frames): frames uint8 [k, H, W, 3], a chunk of the decoded frames; num_frames: how
# many frames the caller asked for in all (with repeats), for transforms whose output size depends on it.
FrameTransform = Callable[[np.ndarray, int], Any]


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learned about a video file.

    duration_s is num_frames / fps (the nominal duration the frame indices span). backend is the backend that
    opened the file ("decord" or "pyav", resolved from "auto").
    """

    path: str
    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    backend: str


@dataclass(frozen=True)
class DecodedFrames:
    """Frames decoded from one file.

    frames: uint8 [N, H, W, 3] RGB (or, with a `transform`, its rows [N, ...]: a numpy array or a torch
    tensor). timestamps_s: float64 [N], each frame's presentation time in seconds from the start of the
    stream, as the decoder reports it. indices: int64 [N], the frame numbers that were asked for.
    """

    frames: Any
    timestamps_s: np.ndarray
    indices: np.ndarray


_cache: OrderedDict[tuple, VideoInfo | str] = OrderedDict()
_cache_lock = threading.Lock()


def clear_probe_cache() -> None:
    """Forget every cached probe result (e.g. after rewriting a file within the same mtime tick)."""
    with _cache_lock:
        _cache.clear()


def check_backend(backend: str) -> str:
    """Check a backend name ("decord" | "pyav" | "auto"), and that a named backend is installed."""
    if backend not in BACKENDS:
        raise ConfigError(f"--video-backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend != "auto" and not _installed(backend):
        module = _MODULE_OF[backend]
        other = "pyav" if backend == "decord" else "decord"
        raise BackendError(
            f"video backend {backend!r} is not installed: pip install {module}, "
            f"or use --video-backend {other}"
        )
    return backend


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(_MODULE_OF[backend]) is not None


def _check_file(path: str) -> os.stat_result:
    """Reject what needs no decoder to reject: missing, not a file, empty, unreadable."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(f"{path}: no such file") from None
    except PermissionError:
        raise VideoError(f"{path}: permission denied") from None
    except OSError as exc:
        raise VideoError(f"{path}: cannot access the file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(f"{path}: is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(f"{path}: is not a regular file")
    if st.st_size == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied (not readable)")
    return st


@dataclass(frozen=True)
class _Failure:
    """Why a probe or decode failed; transient = it says little about the file (a timeout), so never cache it."""

    reason: str
    transient: bool = False


def _timeout_answer(backend: str, what: str, timeout_s: float) -> dict:
    return {
        "ok": False,
        "transient": True,
        "reason": f"the {backend} decoder did not finish {what} within {timeout_s:g} s and was stopped; "
        "the file is probably corrupt",
    }


def _worker_command() -> tuple[str, ...]:
    """How to start a worker: the interpreter and the probe script (read at each call, so a test can swap it)."""
    # -P (Python >= 3.11): do not put the script's folder first on sys.path, where this package's modules
    # (inspect.py...) would shadow the standard library's; probe.py also drops it itself, for 3.10.
    safe_path = ("-P",) if sys.version_info >= (3, 11) else ()
    return (sys.executable or "python3", *safe_path, _PROBE_SCRIPT)


def _run_command(
    args: list[str], backend: str, what: str, timeout_s: float, sink: _worker.FrameSink | None = None
) -> dict:
    """Run one request (probe.py's arguments) in a worker -> its JSON answer; a crash, hang or broken stream
    becomes {"ok": False, "reason", "transient"}. Decoded frames go to `sink`; what it raises propagates."""
    try:
        return _worker.request(_worker_command(), args, timeout_s, sink)
    except _worker.WorkerLost as lost:
        if lost.timed_out:
            return _timeout_answer(backend, what, timeout_s)
        if lost.returncode is None:
            return {"ok": False, "reason": f"the {backend} child process {lost} while {what}"}
        return _exit_answer(lost.returncode, lost.output, backend, what)


def _exit_answer(returncode: int, output: str, backend: str, what: str) -> dict:
    """{"ok": False, "reason", "transient"} for a child that exited (`returncode`) before it answered."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return {
            "ok": False,
            # SIGKILL comes from outside (the kernel's OOM killer, an operator), not from the file.
            "transient": -returncode == signal.SIGKILL,
            "reason": f"the {backend} decoder crashed ({name}) while {what}; "
            "the file is corrupt or unsupported",
        }
    tail = " ".join(output.strip().splitlines()[-3:])[-300:]
    return {
        "ok": False,
        "reason": f"the {backend} child process failed while {what} (exit code {returncode}): {tail}",
    }


def _probe_one(path: str, backend: str, timeout_s: float) -> VideoInfo | _Failure:
    # The worker outlives changes of this process's working directory: it gets an absolute path. "--" ends
    # the options, so a file name starting with "-" stays a file name.
    args = ["probe", "--backend", backend, "--", os.path.abspath(path)]
    answer = _run_command(args, backend, "probing", timeout_s)
    if not answer.get("ok"):
        return _Failure(str(answer.get("reason", "unknown failure")), bool(answer.get("transient")))
    fps = float(answer["fps"])
    num_frames = int(answer["num_frames"])
    return VideoInfo(
        path=path,
        duration_s=num_frames / fps,
        fps=fps,
        num_frames=num_frames,
        width=int(answer["width"]),
        height=int(answer["height"]),
        backend=backend,
    )


def _probe_uncached(path: str, backend: str, timeout_s: float) -> VideoInfo | _Failure:
    if backend != "auto":
        return _probe_one(path, backend, timeout_s)
    decord = _Failure("not installed")
    if _installed("decord"):
        result = _probe_one(path, "decord", timeout_s)
        if isinstance(result, VideoInfo):
            return result
        decord = result
    if not _installed("pyav"):
        return _Failure(f"decord: {decord.reason}; pyav: not installed", decord.transient)
    result = _probe_one(path, "pyav", timeout_s)
    if isinstance(result, VideoInfo):
        return result
    # FFmpeg's reasons (through PyAV) read better than decord's C++ checks, so they come first.
    return _Failure(f"{result.reason} (decord: {decord.reason})", result.transient or decord.transient)


def probe_video(
    path: str | os.PathLike, backend: str = DEFAULT_BACKEND, timeout_s: float = PROBE_TIMEOUT_S
) -> VideoInfo:
    """Check that `path` is a usable video and read its metadata (in a child process, cached).

    Raises VideoError naming the file and the reason (missing, empty, not a video, truncated, corrupt, no
    video stream, no frames, decoder crash or hang), ConfigError for an unknown backend name and BackendError
    for a named backend that is not installed. Timeouts are not cached: the next call probes again.
    """
    path = os.fspath(path)
    check_backend(backend)
    st = _check_file(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, backend)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
    if cached is None:
        result = _probe_uncached(path, backend, timeout_s)
        cached = result.reason if isinstance(result, _Failure) else result
        if not (isinstance(result, _Failure) and result.transient):
            with _cache_lock:
                _cache[key] = cached
                while len(_cache) > _CACHE_SIZE:
                    _cache.popitem(last=False)
    if isinstance(cached, str):
        raise VideoError(f"{path}: {cached}")
    # The cache is keyed by the resolved file; report the path the caller used.
    return cached if cached.path == path else dataclasses.replace(cached, path=path)


def decode_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    backend: str = DEFAULT_BACKEND,
    *,
    isolate: bool = True,
    info: VideoInfo | None = None,
    timeout_s: float | None = None,
    transform: FrameTransform | None = None,
) -> DecodedFrames:
    """Decode the frames at `indices` (any order, repeats allowed) of the video at `path`.

    indices: int [N], each in [0, num_frames). Returns DecodedFrames with frames uint8 [N, H, W, 3] in the
    order of `indices` and their timestamps in seconds. The file is probed first (cached) unless `info` is
    given; the backend is the probed one (so "auto" resolves once). With backend "auto", a decord failure
    while decoding (crash, hang, error) is retried once with PyAV. isolate=True decodes in a child process
    with a timeout of `timeout_s` (default 60 s + 2 s per second of video; time spent in `transform` does not
    count). Raises VideoError naming the file and the reason.

    transform(frames, num_frames), if given, is applied to each chunk of decoded frames as it arrives (each
    requested frame decoded once, chunks in frame order; frames uint8 [k, H, W, 3], num_frames = N) and must
    return a numpy array or torch tensor [k, ...] whose row i depends on frame i only; `frames` then holds
    those rows, in the order of `indices`. Errors raised by the transform propagate unchanged.
    """
    path = os.fspath(path)
    if info is None:
        info = probe_video(path, backend)
    elif backend != "auto" and backend != info.backend:
        raise ValueError(f"info was probed with backend {info.backend!r}, not {backend!r}")
    wanted = np.asarray(indices)
    if wanted.ndim != 1 or wanted.size == 0 or not np.issubdtype(wanted.dtype, np.integer):
        raise ValueError(f"indices must be a non-empty 1-D sequence of ints, got {wanted!r}")
    if wanted.min() < 0 or wanted.max() >= info.num_frames:
        raise ValueError(
            f"frame indices must lie in [0, {info.num_frames}), got {wanted.min()}..{wanted.max()}"
        )
    unique, inverse = np.unique(wanted.astype(np.int64), return_inverse=True)
    if timeout_s is None:
        timeout_s = DECODE_TIMEOUT_BASE_S + DECODE_TIMEOUT_PER_VIDEO_S * info.duration_s
    chunk = max(1, CHUNK_BYTES // max(1, info.width * info.height * 3))

    def attempt(name: str) -> _Frames:
        sink = _Frames(unique.size, transform, wanted.size)
        if isolate:
            _decode_in_child(path, name, unique, chunk, timeout_s, sink)
        else:
            _decode_here(path, name, unique, chunk, sink)
        if sink.filled != unique.size:
            raise _DecodeFailure(
                f"the {name} decoder returned {sink.filled} of the {unique.size} requested frames"
            )
        return sink

    try:
        sink = attempt(info.backend)
    except _DecodeFailure as first:
        if backend != "auto" or info.backend != "decord" or not _installed("pyav"):
            raise VideoError(f"{path}: {first}") from None
        # decord opened the file but cannot decode these frames: FFmpeg through PyAV may (it decodes
        # sequentially instead of seeking, which is what damaged indexes break).
        log.warning("%s: decord failed while decoding (%s); retrying with PyAV", path, first)
        try:
            sink = attempt("pyav")
        except _DecodeFailure as second:
            raise VideoError(f"{path}: {second} (decord: {first})") from None
    return DecodedFrames(
        frames=sink.result(inverse), timestamps_s=sink.stamps[inverse], indices=wanted.astype(np.int64)
    )


class _DecodeFailure(Exception):
    """A reason, in words, why decoding failed (decode_frames turns it into a VideoError)."""


class _Frames:
    """The decoded (and transformed) frames of a decode, filled chunk by chunk in frame order.

    Without a transform, chunks are read straight into the result (`slot`); with one, each chunk is
    transformed on arrival and only the transformed rows are kept.
    """

    def __init__(self, n: int, transform: FrameTransform | None, num_frames: int) -> None:
        self.n, self.transform, self.num_frames = n, transform, num_frames
        self.rows: Any = None
        self.stamps = np.empty(n, dtype=np.float64)
        self.filled = 0
        self.frame_shape: tuple[int, int, int] | None = None

    def slot(self, k: int, shape: tuple[int, int, int]) -> np.ndarray:
        """A contiguous uint8 buffer [k, *shape] for the next k frames (a view of the result, no transform)."""
        self._check(k, shape)
        if self.transform is not None:
            return np.empty((k, *shape), dtype=np.uint8)
        if self.rows is None:
            self.rows = np.empty((self.n, *shape), dtype=np.uint8)
        return self.rows[self.filled : self.filled + k]

    def add(self, frames: np.ndarray, stamps: np.ndarray) -> None:
        """Take a chunk decoded in this process (uint8 [k, H, W, 3], float64 [k])."""
        if self.transform is None:
            buffer = self.slot(frames.shape[0], tuple(frames.shape[1:]))
            buffer[...] = frames
            frames = buffer
        else:
            self._check(frames.shape[0], tuple(frames.shape[1:]))
        self.commit(frames, stamps)

    def _check(self, k: int, shape: tuple[int, ...]) -> None:
        if k < 1 or self.filled + k > self.n:
            raise _DecodeFailure(f"the decoder sent {self.filled + k} frames for {self.n} requested")
        if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise _DecodeFailure(f"the decoder sent frames of shape {shape}, not [H, W, 3]")
        if self.frame_shape is None:
            self.frame_shape = shape
        elif shape != self.frame_shape:
            raise _DecodeFailure("the frame size changes within the video stream, which is not supported")

    def commit(self, frames: np.ndarray, stamps: np.ndarray) -> None:
        """Account for the k frames now in `frames` (a `slot`), transforming them if there is a transform."""
        k = frames.shape[0]
        if self.transform is not None:
            out = self.transform(frames, self.num_frames)
            if out.shape[0] != k:
                raise ValueError(f"the frame transform returned {out.shape[0]} rows for {k} frames")
            if self.rows is None:
                shape = (self.n, *out.shape[1:])
                # A torch tensor (new_empty keeps its dtype and device) or a numpy array.
                self.rows = out.new_empty(shape) if hasattr(out, "new_empty") else np.empty(shape, out.dtype)
            self.rows[self.filled : self.filled + k] = out
        self.stamps[self.filled : self.filled + k] = stamps
        self.filled += k

    def result(self, inverse: np.ndarray) -> Any:
        """The rows in request order (`inverse` maps each request to its unique frame); no copy if it is 1:1."""
        if inverse.size == self.n and np.array_equal(inverse, np.arange(self.n)):
            return self.rows
        if isinstance(self.rows, np.ndarray):
            return self.rows[inverse]
        import torch

        return self.rows[torch.as_tensor(inverse, device=self.rows.device)]


def _decode_here(path: str, backend: str, unique: np.ndarray, chunk: int, sink: _Frames) -> None:
    chunks: Iterator = _probe.ITERATORS[backend](path, unique.tolist(), chunk)
    while True:
        try:
            item = next(chunks, None)
        except _probe.Unusable as exc:
            raise _DecodeFailure(str(exc)) from exc
        except Exception as exc:  # decoder errors (DECORDError, av.error.*) are properties of the file
            raise _DecodeFailure(f"the {backend} decoder failed ({_probe.describe_error(exc)})") from exc
        if item is None:
            return
        frames, stamps = item
        if frames.ndim != 4 or stamps.shape != frames.shape[:1]:
            raise _DecodeFailure(f"the {backend} decoder returned frames of shape {tuple(frames.shape)}")
        sink.add(frames, stamps)


def _decode_in_child(
    path: str, backend: str, unique: np.ndarray, chunk: int, timeout_s: float, sink: _Frames
) -> None:
    """Decode in a worker process that streams frames through a pipe into `sink` (see probe.py, worker.py)."""
    args = ["decode", "--backend", backend, "--indices", ",".join(map(str, unique.tolist()))]
    # An absolute path: the worker may have started in another working directory. "--" ends the options.
    args += ["--chunk", str(chunk), "--", os.path.abspath(path)]
    answer = _run_command(args, backend, "decoding", timeout_s, sink)
    if not answer.get("ok"):
        raise _DecodeFailure(str(answer.get("reason", "unknown failure")))
