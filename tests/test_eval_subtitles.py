"""Subtitles: the .srt parser on real-world quirks, the line selection rules, and the frame times they use
(the decoder's own frame plan). References: cue values written by hand next to each file text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from longrl.data.schema import Example
from longrl.eval.subtitles import (
    Cue,
    format_subtitles,
    frame_times,
    parse_srt,
    read_srt,
    select_cues,
    with_subtitles,
)
from longrl.video.decode import VideoInfo
from longrl.video.sampling import SamplingConfig, plan_frames

PLAIN = """1
00:00:01,000 --> 00:00:02,500
Hello there.

2
00:00:03,000 --> 00:00:05,000
Two lines
of text.

"""

# Video-MME's style: BOM, CRLF, <font> tags; then no blank line between cues, a missing cue number, "."
# before the milliseconds, an ASS tag, a 1-digit fraction, an empty cue, and a cue ending before it starts.
MESSY = (
    "\ufeff1\r\n00:00:00,000 --> 00:00:01,200\r\n"
    '<font color="white" size=".72c">welcome <i>back</i></font>\r\n\r\n'
    "2\r\n00:00:01,200 --> 00:00:02,000\r\nno blank line after me\r\n"
    "3\r\n00:00:02,000 --> 00:00:03,000\r\nnext cue\r\n\r\n"
    "00:00:04.5 --> 00:00:05.25\r\n{\\an8}unnumbered   cue\r\n\r\n"
    "5\r\n00:00:06,000 --> 00:00:07,000\r\n<b></b>\r\n\r\n"
    "6\r\n01:00:08,000 --> 01:00:07,000\r\nbackwards\r\n"
)


def test_parse_plain_srt():
    assert parse_srt(PLAIN) == [Cue(1.0, 2.5, "Hello there."), Cue(3.0, 5.0, "Two lines of text.")]


def test_parse_messy_srt():
    assert parse_srt(MESSY) == [
        Cue(0.0, 1.2, "welcome back"),
        Cue(1.2, 2.0, "no blank line after me"),
        Cue(2.0, 3.0, "next cue"),
        Cue(4.5, 5.25, "unnumbered cue"),
        Cue(3608.0, 3608.0, "backwards"),
    ]


def test_parse_cr_only_and_a_number_that_is_text():
    text = "1\r00:00:01,000 --> 00:00:02,000\r2020\rwas a year\r\r"
    assert parse_srt(text) == [Cue(1.0, 2.0, "2020 was a year")]


def test_read_srt_latin1_fallback(tmp_path: Path):
    path = tmp_path / "x.srt"
    path.write_bytes("1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n".encode("latin-1"))
    assert read_srt(path) == [Cue(1.0, 2.0, "café")]


CUES = [Cue(0.0, 1.0, "a"), Cue(1.0, 3.0, "b"), Cue(3.5, 3.9, "c"), Cue(5.0, 9.0, "d"), Cue(9.5, 10.0, "e")]


def test_select_cues_frames_rule():
    # Frames at 0.5, 2.0, 6.0: "a" (0-1), "b" (1-3) and "d" (5-9) are on screen; "c" falls between frames.
    picked = select_cues(CUES, [0.5, 2.0, 6.0], "frames")
    assert [c.text for c in picked] == ["a", "b", "d"]
    # start inclusive, end exclusive
    assert [c.text for c in select_cues(CUES, [1.0], "frames")] == ["b"]
    assert select_cues(CUES, [], "frames") == []


def test_select_cues_span_rule():
    # Span [2.0, 6.0 + 2.0): every cue overlapping it, "c" included, "e" (9.5) not; "a" ends before 2.0.
    picked = select_cues(CUES, [2.0, 4.0, 6.0], "span")
    assert [c.text for c in picked] == ["b", "c", "d"]
    with pytest.raises(ValueError):
        select_cues(CUES, [1.0], "nearest")


def test_frame_times_follow_the_frame_plan():
    info = VideoInfo(
        path="v.mp4", duration_s=10.0, fps=8.0, num_frames=80, width=64, height=48, backend="pyav"
    )
    sampling = SamplingConfig(num_frames=4)
    times = frame_times(info, sampling)
    np.testing.assert_array_equal(times, plan_frames(80, 8.0, sampling).timestamps_s)
    # Frame-center sampling of 4 of 80 frames: indices 10, 30, 50, 70 at 8 fps.
    np.testing.assert_allclose(times, [1.25, 3.75, 6.25, 8.75])


def test_with_subtitles_inserts_a_timestamped_block():
    ex = Example("q", "What happens?", ["x", "y"], "A", "", "", "video", Path("/v.mp4"), "v.mp4")
    out = with_subtitles(ex, [Cue(12.34, 13.0, "hi"), Cue(15.0, 16.0, "bye")])
    assert out.question == "Subtitles:\n[12.3s] hi\n[15.0s] bye\n\nWhat happens?"
    assert (out.options, out.answer, out.id) == (ex.options, ex.answer, ex.id)
    assert with_subtitles(ex, []) is ex
    assert format_subtitles([]) == ""
