"""Frame sampling and clip segmentation against values computed by hand from the documented rules.

Rules: frame-center sampling index_i = first + floor((2i + 1) * F / (2n)); counts are multiples of 2 (rounded
up in num_frames mode, down in fps mode); clips of clip_s seconds with a shorter last clip. Exact comparisons
(all integer arithmetic; timestamps are index / fps, compared with 1e-12 tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest

from longrl.errors import ConfigError
from longrl.video.sampling import (
    SamplingConfig,
    TooFewFrames,
    frame_count,
    frame_span,
    plan_clips,
    plan_frames,
    segment_clips,
    uniform_indices,
)


@pytest.mark.parametrize(
    ("first", "stop", "n", "expected"),
    [
        (0, 100, 4, [12, 37, 62, 87]),  # parts of 25 frames, centers at 12.5 + 25i
        (0, 10, 10, list(range(10))),  # n == F takes every frame
        (0, 7, 3, [1, 3, 5]),  # 7/6 = 1.17, 3.5, 5.83
        (0, 1, 4, [0, 0, 0, 0]),  # one frame repeated
        (10, 13, 6, [10, 10, 11, 11, 12, 12]),  # offset span, each frame twice
        (0, 5, 2, [1, 3]),  # 1.25, 3.75
        (0, 2**40, 2, [2**38, 3 * 2**38]),  # large counts stay exact (integer arithmetic)
    ],
)
def test_uniform_indices(first, stop, n, expected):
    out = uniform_indices(first, stop, n)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_uniform_indices_is_frame_center_sampling():
    """Against the float definition on many sizes: the frame under the center of each of n equal parts."""
    for count in range(1, 60):
        for n in range(1, 70):
            centers = (np.arange(n) + 0.5) * count / n
            np.testing.assert_array_equal(uniform_indices(3, 3 + count, n), 3 + np.floor(centers + 1e-9))


def test_uniform_indices_rejects_empty():
    with pytest.raises(ValueError):
        uniform_indices(5, 5, 2)
    with pytest.raises(ValueError):
        uniform_indices(0, 5, 0)


@pytest.mark.parametrize(
    ("config", "span_frames", "span_s", "expected"),
    [
        (SamplingConfig(num_frames=8), 100, 4.0, 8),
        (SamplingConfig(num_frames=7), 100, 4.0, 8),  # odd -> rounded up to a multiple of 2
        (SamplingConfig(num_frames=1), 100, 4.0, 2),
        (SamplingConfig(num_frames=9, frame_multiple=4), 100, 4.0, 12),
        (SamplingConfig(fps=2.0), 300, 10.0, 20),  # 10 s * 2 fps
        (SamplingConfig(fps=1.0), 159, 5.3, 4),  # floor(5.3) = 5 -> rounded down to 4
        (SamplingConfig(fps=2.0, max_frames=15), 300, 10.0, 14),  # capped at 15 -> 14
        (SamplingConfig(fps=30.0), 21, 2.625, 20),  # more than the span holds: its 21 frames -> 20
        (SamplingConfig(fps=0.1), 100, 4.0, 2),  # floor(0.4) = 0 -> min_frames 2
        (SamplingConfig(fps=0.5, min_frames=6), 300, 10.0, 6),  # 5 -> min_frames 6
        (SamplingConfig(fps=1.0), 1, 0.125, 2),  # a 1-frame span: 2 (the frame repeated)
    ],
)
def test_frame_count(config, span_frames, span_s, expected):
    assert frame_count(config, span_frames, span_s) == expected


def test_short_span_policies():
    assert frame_count(SamplingConfig(num_frames=16), 5, 1.0) == 16  # repeat (default)
    assert frame_count(SamplingConfig(num_frames=16, on_short="cap"), 5, 1.0) == 4
    assert frame_count(SamplingConfig(num_frames=16, on_short="cap"), 1, 1.0) == 2
    with pytest.raises(TooFewFrames, match="needs 16 frames but the span holds only 5"):
        frame_count(SamplingConfig(num_frames=16, on_short="error"), 5, 1.0)
    with pytest.raises(TooFewFrames):
        frame_count(SamplingConfig(fps=1.0, on_short="error"), 1, 0.5)
    assert frame_count(SamplingConfig(num_frames=6, on_short="error"), 6, 1.0) == 6  # exactly enough


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "num_frames and fps"),
        ({"num_frames": 4, "fps": 1.0}, "num_frames and fps"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": "8"}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"fps": 0.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": "2"}, "fps"),
        ({"num_frames": 4, "on_short": "pad"}, "on_short"),
        ({"fps": 1.0, "max_frames": 1}, "max_frames"),
        ({"fps": 1.0, "min_frames": 10, "max_frames": 8}, "max_frames"),
        ({"fps": 1.0, "min_frames": 0}, "min_frames"),
        ({"num_frames": 4, "frame_multiple": 0}, "frame_multiple"),
    ],
)
def test_config_validation(kwargs, field):
    """A bad value is a one-line ConfigError (what the CLI prints) naming the field and the value."""
    with pytest.raises(ConfigError) as info:
        SamplingConfig(**kwargs)
    message = str(info.value)
    assert message.startswith(f"sampling {field}") or f"one of {field}" in message, message
    assert "\n" not in message
    if field in kwargs:
        assert f"got {kwargs[field]!r}" in message, message


def test_config_accepts_numpy_numbers():
    assert SamplingConfig(num_frames=np.int64(8)).num_frames == 8
    assert SamplingConfig(fps=np.float32(0.5), max_frames=np.int32(16)).fps == 0.5


def test_frame_span():
    # 8 fps: frame i at i / 8 s. [1.0, 2.0) holds frames 8..15; [0.3, 0.5) holds frames 3 (0.375) only.
    assert frame_span(40, 8.0, 1.0, 2.0) == (8, 16)
    assert frame_span(40, 8.0, 0.3, 0.5) == (3, 4)
    assert frame_span(40, 8.0, 4.0, 99.0) == (32, 40)
    # 29.97 fps (30000/1001): frame 300 is at 10.01 s, frame 299 at 9.977 s -> [10, 20) starts at frame 300.
    fps = 30000 / 1001
    assert frame_span(10**4, fps, 10.0, 20.0) == (300, 600)
    # Float error in start * fps (0.1 * 30 = 3.0000000000000004) must not skip frame 3.
    assert frame_span(100, 30.0, 0.1, 0.2) == (3, 6)


def test_plan_frames_whole_video():
    plan = plan_frames(90, 30.0, SamplingConfig(num_frames=6))
    np.testing.assert_array_equal(plan.indices, [7, 22, 37, 52, 67, 82])
    np.testing.assert_allclose(plan.timestamps_s, np.array([7, 22, 37, 52, 67, 82]) / 30, rtol=0, atol=1e-12)
    assert (plan.start_s, plan.end_s) == (0.0, 3.0)
    assert plan.sampled_fps == pytest.approx(2.0)


def test_plan_frames_by_fps():
    # 10 s at 24 fps, 1 fps -> 10 frames: 24 frames per part, centers at 12 + 24 i.
    plan = plan_frames(240, 24.0, SamplingConfig(fps=1.0))
    np.testing.assert_array_equal(plan.indices, 12 + 24 * np.arange(10))
    assert plan.sampled_fps == pytest.approx(1.0)


def test_plan_frames_span():
    # [2.5, 4.0) s at 8 fps = frames 20..31 (12 frames); 4 frames at 1.5 + 3 i -> 21, 24, 27, 30.
    plan = plan_frames(40, 8.0, SamplingConfig(num_frames=4), start_s=2.5, end_s=4.0)
    np.testing.assert_array_equal(plan.indices, [21, 24, 27, 30])
    assert plan.sampled_fps == pytest.approx(4 / 1.5)
    assert plan.start_s <= plan.timestamps_s.min() and plan.timestamps_s.max() < plan.end_s
    # end_s past the end is clipped to the duration (5 s).
    assert plan_frames(40, 8.0, SamplingConfig(num_frames=2), start_s=4.0, end_s=9.0).end_s == 5.0
    with pytest.raises(ValueError, match="holds no frame"):
        plan_frames(40, 8.0, SamplingConfig(num_frames=2), start_s=5.0)


@pytest.mark.parametrize(
    ("duration", "clip_s", "expected"),
    [
        (25.0, 10.0, [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]),
        (20.0, 10.0, [(0.0, 10.0), (10.0, 20.0)]),  # divides evenly: no empty last clip
        (20.0000000001, 10.0, [(0.0, 10.0), (10.0, 20.0000000001)]),  # float noise: no sliver clip
        (3.0, 10.0, [(0.0, 3.0)]),  # shorter than one clip
        (3.0, 1.25, [(0.0, 1.25), (1.25, 2.5), (2.5, 3.0)]),
    ],
)
def test_segment_clips(duration, clip_s, expected):
    assert segment_clips(duration, clip_s) == expected


def test_segment_clips_default_is_10s():
    assert segment_clips(35.0) == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 35.0)]
    with pytest.raises(ValueError):
        segment_clips(0.0)
    with pytest.raises(ValueError):
        segment_clips(5.0, 0.0)


def test_plan_clips():
    # 25 s at 4 fps = 100 frames; clips [0,10) [10,20) [20,25) hold frames 0-39, 40-79, 80-99.
    plans = plan_clips(100, 4.0, SamplingConfig(num_frames=4))
    assert [(p.start_s, p.end_s) for p in plans] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    np.testing.assert_array_equal(plans[0].indices, [5, 15, 25, 35])
    np.testing.assert_array_equal(plans[1].indices, [45, 55, 65, 75])
    np.testing.assert_array_equal(plans[2].indices, [82, 87, 92, 97])  # 20 frames: 2.5 + 5 i
    assert [p.sampled_fps for p in plans] == pytest.approx([0.4, 0.4, 0.8])
    # By rate: 1 fps gives 10, 10 and 5 -> 4 frames.
    by_rate = plan_clips(100, 4.0, SamplingConfig(fps=1.0))
    assert [p.indices.size for p in by_rate] == [10, 10, 4]
