"""`longrl video inspect`: the frame plan and token cost of a real (generated) video, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli
from videos import write_text, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "ten_seconds.mp4", num_frames=300, fps=30)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_inspect_reports_plan_grid_and_tokens(video: Path, tmp_path: Path, backend: str) -> None:
    out = tmp_path / "cost.json"
    result = run_cli("video", "inspect", str(video), "--frames", "16", "--video-backend", backend,
                     "--json", str(out), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    cost = json.loads(out.read_text())
    assert cost["info"]["num_frames"] == 300 and cost["info"]["fps"] == pytest.approx(30)
    assert cost["info"]["backend"] == backend
    # By hand: 64x48 frames are below min_pixels (128*28*28), so smart_resize scales them up:
    # beta = sqrt(100352 / 3072); h = ceil(48*beta/28)*28 = 280, w = ceil(64*beta/28)*28 = 392.
    assert cost["frames"] == 16 and cost["resized"] == [280, 392]
    assert cost["grid_thw"] == [8, 20, 28] and cost["visual_tokens"] == 8 * 20 * 28 // 4
    # Frame centres of 16 equal parts of 300 frames: first index floor(300/32) = 9, last floor(31*300/32) = 290.
    assert cost["first_s"] == pytest.approx(9 / 30) and cost["last_s"] == pytest.approx(290 / 30)
    assert "visual tokens: 1120" in result.stdout


def test_inspect_by_fps_default_is_two_frames_per_second(video: Path, tmp_path: Path) -> None:
    result = run_cli("video", "inspect", str(video), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sampled: 20 frames at 2.000 fps" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--video-backend", "nope"], "--video-backend must be one of"),
        (["--frames", "0"], "num_frames must be >= 1"),
        (["--frames", "8", "--fps", "1"], "not both"),
    ],
)
def test_inspect_bad_flags_are_one_line_exit_2(
    video: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli("video", "inspect", str(video), *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_bad_video_names_the_file(tmp_path: Path) -> None:
    fake = write_text(tmp_path / "notes.mp4")
    result = run_cli("video", "inspect", str(fake), cwd=tmp_path)
    assert result.returncode == 2 and "notes.mp4" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_rejects_a_pixel_budget_below_the_minimum(video: Path, tmp_path: Path) -> None:
    result = run_cli("video", "inspect", str(video), "--max-pixels", "50176", cwd=tmp_path)
    assert result.returncode == 2 and "min_pixels (100352) is larger than max_pixels (50176)" in result.stderr
