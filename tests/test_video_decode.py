"""Decoding: frame content, timestamps and metadata for both backends; backends agree; probe cache;
load_video.

Reference: the frames tests/videos.py wrote (frame index encoded in bars, a known colour per frame) and their
pts (frame i at exactly i / fps seconds). Tolerances: decoded colours within 6 levels of the written RGB
(H.264 at crf 12 / mpeg4 at q 2 on flat colour), mean absolute pixel error below 3 levels, timestamps within
1e-4 s (decord reports float32). decord and PyAV must give identical pixels (both use FFmpeg and swscale).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from videos import bottom_colour, colour_of, frame_index_of, make_frame, write_video

import longrl.video.decode as decode_mod
from longrl.errors import BackendError, ConfigError
from longrl.video import (
    FrameResizer,
    QwenVideoConfig,
    SamplingConfig,
    clear_probe_cache,
    decode_frames,
    load_clips,
    load_video,
    preprocess_video,
    probe_video,
)

BACKENDS = ["decord", "pyav"]

# (name, frames, fps, codec): H.264 with B-frames and a keyframe every 8 frames; mpeg4; an odd frame rate.
VIDEOS = [("h264_8fps", 40, 8, None), ("mpeg4_30fps", 90, 30, "mpeg4"), ("h264_25fps", 63, 25, None)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("videos")
    return {
        name: (str(write_video(root / f"{name}.mp4", n, fps, codec=codec)), n, fps)
        for name, n, fps, codec in VIDEOS
    }


def check_frames(frames: np.ndarray, indices: np.ndarray) -> None:
    """Each decoded frame shows the index it was asked for, with the written colours."""
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), 48, 64, 3)
    for frame, index in zip(frames, indices, strict=True):
        assert frame_index_of(frame) == index
        assert np.abs(colour_of(frame) - np.array(bottom_colour(int(index)))).max() <= 6
        assert np.abs(frame.astype(np.int16) - make_frame(int(index))).mean() < 3


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("name", [v[0] for v in VIDEOS])
def test_probe_metadata(videos, name, backend):
    path, n, fps = videos[name]
    info = probe_video(path, backend)
    assert info.path == path
    assert info.num_frames == n
    assert info.fps == pytest.approx(fps, rel=1e-6)
    assert info.duration_s == pytest.approx(n / fps, rel=1e-6)
    assert (info.width, info.height) == (64, 48)
    assert info.backend == ("decord" if backend == "auto" else backend)


@pytest.mark.parametrize("isolate", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [v[0] for v in VIDEOS])
def test_decode_content_and_timestamps(videos, name, backend, isolate):
    path, n, fps = videos[name]
    # Unsorted, repeated, first and last frame, frames either side of a keyframe (every 8).
    indices = np.array([n - 1, 0, 7, 8, 8, 3, n // 2, 1])
    out = decode_frames(path, indices, backend, isolate=isolate)
    np.testing.assert_array_equal(out.indices, indices)
    check_frames(out.frames, indices)
    assert out.timestamps_s.dtype == np.float64
    np.testing.assert_allclose(out.timestamps_s, indices / fps, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", [v[0] for v in VIDEOS])
def test_backends_give_identical_frames(videos, name):
    path, n, fps = videos[name]
    every = np.arange(n)
    a = decode_frames(path, every, "decord", isolate=False)
    b = decode_frames(path, every, "pyav", isolate=False)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_allclose(a.timestamps_s, b.timestamps_s, rtol=0, atol=1e-4)
    check_frames(b.frames, every)


def test_isolated_and_in_process_decoding_agree(videos):
    path, n, _ = videos["h264_25fps"]
    indices = np.arange(0, n, 5)
    a = decode_frames(path, indices, "decord", isolate=True)
    b = decode_frames(path, indices, "decord", isolate=False)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps_s, b.timestamps_s)


def test_decode_rejects_bad_indices(videos):
    path, n, _ = videos["h264_8fps"]
    for bad in ([n], [-1], [], [[0, 1]], [0.5]):
        with pytest.raises(ValueError):
            decode_frames(path, np.array(bad), "pyav", isolate=False)


def test_backend_names_are_checked(videos, monkeypatch):
    path = videos["h264_8fps"][0]
    with pytest.raises(ConfigError, match="decord, pyav, auto"):
        probe_video(path, "opencv")
    monkeypatch.setattr(decode_mod, "_installed", lambda backend: backend != "decord")
    with pytest.raises(BackendError, match="pip install decord"):
        probe_video(path, "decord")


def test_auto_falls_back_to_pyav_without_decord(videos, monkeypatch):
    clear_probe_cache()
    monkeypatch.setattr(decode_mod, "_installed", lambda backend: backend != "decord")
    path, n, fps = videos["h264_8fps"]
    info = probe_video(path, "auto")
    assert info.backend == "pyav" and info.num_frames == n
    out = decode_frames(path, [5, 6], "auto")
    check_frames(out.frames, np.array([5, 6]))
    clear_probe_cache()


def test_probe_runs_once_per_file_version(videos, tmp_path, monkeypatch):
    """The child process runs once per (path, size, mtime, backend); a rewritten file is probed again."""
    calls = []
    real = decode_mod._run_command
    monkeypatch.setattr(decode_mod, "_run_command", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = str(write_video(tmp_path / "v.mp4", 16, 8))
    clear_probe_cache()
    first = probe_video(path, "pyav")
    assert probe_video(path, "pyav") == first and len(calls) == 1
    probe_video(path, "decord")
    assert len(calls) == 2
    decode_frames(path, [1, 2], "pyav", isolate=False)  # uses the cached probe, decodes in-process
    assert len(calls) == 2
    write_video(path, 24, 8)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert probe_video(path, "pyav").num_frames == 24 and len(calls) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_video_uniform(videos, backend):
    path, n, fps = videos["mpeg4_30fps"]
    video = load_video(path, SamplingConfig(num_frames=6), backend)
    # Frame-center sampling of 6 out of 90: floor((2i + 1) * 90 / 12) = 7, 22, 37, 52, 67, 82.
    np.testing.assert_array_equal(video.indices, [7, 22, 37, 52, 67, 82])
    check_frames(video.frames, video.indices)
    np.testing.assert_allclose(video.timestamps_s, video.indices / fps, atol=1e-4)
    assert video.sampled_fps == pytest.approx(6 / 3.0)
    assert (video.start_s, video.end_s) == (0.0, pytest.approx(3.0))


def test_load_video_by_fps_with_cap(videos):
    path, n, fps = videos["h264_25fps"]  # 63 frames, 2.52 s
    video = load_video(path, SamplingConfig(fps=4.0), "pyav")
    # floor(2.52 * 4) = 10 frames: floor((2i + 1) * 63 / 20) = 3, 9, 15, 22, 28, 34, 40, 47, 53, 59.
    np.testing.assert_array_equal(video.indices, [3, 9, 15, 22, 28, 34, 40, 47, 53, 59])
    check_frames(video.frames, video.indices)
    capped = load_video(path, SamplingConfig(fps=4.0, max_frames=5), "pyav")
    # max_frames 5 -> 4 (a multiple of 2): floor((2i + 1) * 63 / 8) = 7, 23, 39, 55.
    np.testing.assert_array_equal(capped.indices, [7, 23, 39, 55])
    check_frames(capped.frames, capped.indices)


def test_load_clips(videos):
    path, n, fps = videos["mpeg4_30fps"]  # 90 frames, 3 s
    clips = load_clips(path, SamplingConfig(num_frames=2), clip_s=1.25, backend="decord")
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 1.25), (1.25, 2.5), (2.5, pytest.approx(3.0))]
    # Clip frames [0, 38), [38, 75), [75, 90); 2 frames each at the part centers.
    expected = [[9, 28], [47, 65], [78, 86]]
    for clip, want in zip(clips, expected, strict=True):
        np.testing.assert_array_equal(clip.indices, want)
        check_frames(clip.frames, clip.indices)
        np.testing.assert_allclose(clip.timestamps_s, np.array(want) / fps, atol=1e-4)
        assert clip.start_s <= clip.timestamps_s.min() and clip.timestamps_s.max() < clip.end_s
    assert clips[2].sampled_fps == pytest.approx(2 / 0.5)


@pytest.mark.parametrize("isolate", [True, False])
def test_file_name_starting_with_dash(tmp_path, monkeypatch, isolate):
    """A relative name like "-clip.mp4" must reach the child process as a file name, not an option."""
    write_video(tmp_path / "-clip.mp4", 8, 8)
    monkeypatch.chdir(tmp_path)
    clear_probe_cache()
    video = load_video("-clip.mp4", SamplingConfig(num_frames=2), "auto", isolate=isolate)
    assert video.path == "-clip.mp4"
    check_frames(video.frames, np.array([2, 6]))


@pytest.mark.parametrize("isolate", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_transform_runs_on_chunks_while_decoding(videos, monkeypatch, backend, isolate):
    """Frames arrive (through the child's pipe, or in-process) a chunk at a time and are transformed on
    arrival; the result equals transforming the plain decode, in request order with repeats."""
    path, n, _ = videos["h264_8fps"]
    monkeypatch.setattr(decode_mod, "CHUNK_BYTES", 3 * 48 * 64 * 3)  # 3 frames per chunk
    indices = np.array([n - 1, 0, 7, 8, 8, 3, n // 2, 1, 30, 31, 2])  # 10 distinct frames
    seen = []

    def transform(frames: np.ndarray, num_frames: int) -> np.ndarray:
        seen.append((frames.shape, num_frames))
        return frames[:, ::2, ::2].astype(np.int16) * 2 - 1  # per frame: subsample, change dtype

    out = decode_frames(path, indices, backend, isolate=isolate, transform=transform)
    plain = decode_frames(path, indices, backend, isolate=isolate)
    check_frames(plain.frames, indices)
    assert out.frames.dtype == np.int16
    np.testing.assert_array_equal(out.frames, plain.frames[:, ::2, ::2].astype(np.int16) * 2 - 1)
    np.testing.assert_array_equal(out.timestamps_s, plain.timestamps_s)
    np.testing.assert_array_equal(out.indices, indices)
    assert seen == [((k, 48, 64, 3), len(indices)) for k in (3, 3, 3, 1)]


@pytest.mark.parametrize("isolate", [True, False])
def test_resizing_while_decoding_equals_preprocessing_full_frames(videos, monkeypatch, isolate):
    path, n, _ = videos["mpeg4_30fps"]
    monkeypatch.setattr(decode_mod, "CHUNK_BYTES", 4 * 48 * 64 * 3)
    config = QwenVideoConfig(min_pixels=28 * 28 * 8, max_pixels=28 * 28 * 20)  # 48x64 -> 84x112 (upscale)
    indices = np.array([0, 5, 5, 17, 40, 41, 63, 88, 89])
    resized = decode_frames(path, indices, "auto", isolate=isolate, transform=FrameResizer(config))
    plain = decode_frames(path, indices, "auto", isolate=isolate)
    assert isinstance(resized.frames, torch.Tensor) and resized.frames.shape == (9, 84, 112, 3)
    rows, grid = preprocess_video(resized.frames, config, resized=True)
    ref_rows, ref_grid = preprocess_video(plain.frames, config)
    assert grid == ref_grid == (5, 6, 8) and torch.equal(rows, ref_rows)
    video = load_video(path, SamplingConfig(num_frames=6), transform=FrameResizer(config), isolate=isolate)
    assert video.frames.shape == (6, 84, 112, 3)


def test_transform_errors_propagate(videos):
    path = videos["h264_8fps"][0]

    def broken(frames, num_frames):
        raise RuntimeError("out of memory (a stand-in)")

    for isolate in (True, False):
        with pytest.raises(RuntimeError, match="stand-in"):
            decode_frames(path, [1, 2], "pyav", isolate=isolate, transform=broken)
