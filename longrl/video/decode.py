"""Open, probe and decode videos with decord (default) or PyAV, without ever crashing or hanging the caller.

Backends: "decord" | "pyav" | "auto" (decord when it is installed and opens the file, else PyAV).

Safety: native decoders can segfault or hang on corrupt input, and no Python `try` catches a segfault. So:
1. `probe_video` checks the path in this process (missing, directory, empty, unreadable), then opens the file
   in a child interpreter (`longrl/video/probe.py`) with a timeout: it reads frame count, rate and size and
   decodes the first and last frame. A crash or timeout there becomes a `VideoError`. Results (and failures)
   are cached per (path, size, mtime, backend), so each file is probed once per process.
2. `decode_frames` decodes in a child process too (`isolate=True`, the default; frames come back through a
   temporary .npz file). A file can pass the probe and still hang the decoder later (seen with decord on files
   with damaged sample tables, at random), so only this keeps the guarantee. (Seen here, decord 0.6.0: an mp4
   whose stts entry count is wrong makes decord abort the whole process with std::bad_alloc; see
   tests/videos.py:write_bad_sample_table.) `isolate=False` decodes in-process: faster
   (no interpreter start, no copy), for inputs you trust; Python-level decoder errors still become
   `VideoError`.

Every failure is a `longrl.errors.VideoError` whose message starts with the path and says why.
Frames are numpy uint8 [N, H, W, 3] RGB; convert with `torch.from_numpy` (no copy).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longrl.errors import BackendError, ConfigError, VideoError
from longrl.video import probe as _probe

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

    frames: uint8 [N, H, W, 3] RGB. timestamps_s: float64 [N], each frame's presentation time in seconds from
    the start of the stream, as the decoder reports it. indices: int64 [N], the frame numbers that were asked
    for.
    """

    frames: np.ndarray
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


def _run_child(args: list[str], backend: str, what: str, timeout_s: float) -> dict:
    """Run the probe script with `args` -> its JSON answer ({"ok": False, "reason"} for a crash or hang)."""
    cmd = [sys.executable or "python3", _PROBE_SCRIPT, *args]
    return _run_command(cmd, backend, what, timeout_s)


def _run_command(cmd: list[str], backend: str, what: str, timeout_s: float) -> dict:
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, errors="replace"
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed the child by now.
        return {
            "ok": False,
            "reason": f"the {backend} decoder did not finish {what} within {timeout_s:g} s and was stopped; "
            "the file is probably corrupt",
        }
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return {
            "ok": False,
            "reason": f"the {backend} decoder crashed ({name}) while {what}; "
            "the file is corrupt or unsupported",
        }
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1])
        if not isinstance(answer, dict) or "ok" not in answer:
            raise ValueError("not a probe answer")
    except (IndexError, ValueError):
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
        return {
            "ok": False,
            "reason": f"the {backend} child process failed while {what} "
            f"(exit code {proc.returncode}): {tail}",
        }
    return answer


def _probe_one(path: str, backend: str, timeout_s: float) -> VideoInfo | str:
    # "--" ends the options, so a file name starting with "-" stays a file name.
    answer = _run_child(["probe", "--backend", backend, "--", path], backend, "probing", timeout_s)
    if not answer.get("ok"):
        return str(answer.get("reason", "unknown failure"))
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


def _probe_uncached(path: str, backend: str, timeout_s: float) -> VideoInfo | str:
    if backend != "auto":
        return _probe_one(path, backend, timeout_s)
    decord_reason = "not installed"
    if _installed("decord"):
        result = _probe_one(path, "decord", timeout_s)
        if isinstance(result, VideoInfo):
            return result
        decord_reason = result
    if not _installed("pyav"):
        return f"decord: {decord_reason}; pyav: not installed"
    result = _probe_one(path, "pyav", timeout_s)
    # FFmpeg's reasons (through PyAV) read better than decord's C++ checks, so they come first.
    return result if isinstance(result, VideoInfo) else f"{result} (decord: {decord_reason})"


def probe_video(
    path: str | os.PathLike, backend: str = DEFAULT_BACKEND, timeout_s: float = PROBE_TIMEOUT_S
) -> VideoInfo:
    """Check that `path` is a usable video and read its metadata (in a child process, cached).

    Raises VideoError naming the file and the reason (missing, empty, not a video, truncated, corrupt, no
    video stream, no frames, decoder crash or hang), ConfigError for an unknown backend name and BackendError
    for a named backend that is not installed.
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
        cached = _probe_uncached(path, backend, timeout_s)
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
) -> DecodedFrames:
    """Decode the frames at `indices` (any order, repeats allowed) of the video at `path`.

    indices: int [N], each in [0, num_frames). Returns DecodedFrames with frames uint8 [N, H, W, 3] in the
    order of `indices` and their timestamps in seconds. The file is probed first (cached) unless `info` is
    given; the backend is the probed one (so "auto" resolves once). isolate=True decodes in a child process
    with a timeout of `timeout_s` (default 60 s + 2 s per second of video). Raises VideoError naming the file
    and the reason.
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
    if isolate:
        if timeout_s is None:
            timeout_s = DECODE_TIMEOUT_BASE_S + DECODE_TIMEOUT_PER_VIDEO_S * info.duration_s
        frames, stamps = _decode_in_child(path, info.backend, unique, timeout_s)
    else:
        frames, stamps = _decode_here(path, info.backend, unique)
    if frames.ndim != 4 or frames.shape[0] != unique.size or frames.shape[3] != 3:
        raise VideoError(
            f"{path}: the {info.backend} decoder returned frames of shape {tuple(frames.shape)} for "
            f"{unique.size} requested frames"
        )
    return DecodedFrames(
        frames=frames[inverse], timestamps_s=stamps[inverse], indices=wanted.astype(np.int64)
    )


def _decode_here(path: str, backend: str, unique: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _probe.DECODERS[backend](path, unique.tolist())
    except _probe.Unusable as exc:
        raise VideoError(f"{path}: {exc}") from exc
    except Exception as exc:  # decoder errors (DECORDError, av.error.*) are properties of the file
        raise VideoError(f"{path}: the {backend} decoder failed ({_probe.describe_error(exc)})") from exc


def _decode_in_child(
    path: str, backend: str, unique: np.ndarray, timeout_s: float
) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="longrl-video-") as tmp:
        out = os.path.join(tmp, "frames.npz")
        args = [
            "decode",
            "--backend",
            backend,
            "--indices",
            ",".join(map(str, unique.tolist())),
            "--out",
            out,
            "--",
            path,
        ]
        answer = _run_child(args, backend, "decoding", timeout_s)
        if not answer.get("ok"):
            raise VideoError(f"{path}: {answer.get('reason', 'unknown failure')}")
        with np.load(out, allow_pickle=False) as data:
            return data["frames"], data["timestamps"].astype(np.float64)
