"""`longrl bench rl-step` measures what it says: the vanilla variant really runs the vision tower for every
rollout and every prefill, MR-SP once per video; the report has one row per variant and frame count.

(Benchmarks never pass or fail on speed: these tests check the counting and the report, not the numbers.)
The variants run in this process (`_worker` without a torchrun environment is the single-process grid);
the CLI is checked for its one-line errors only (a full run spawns processes and takes minutes).
"""

from __future__ import annotations

import pytest
import torch
from helpers import run_cli

from longrl.bench.rl_step import StepShape, _model, _rows, _worker, write_bench_video

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_rl")
    paths = [str(write_bench_video(root / f"v{i}.mp4", 8, seed=i)) for i in range(2)]
    shape = StepShape(prompts=2, n=3, new_tokens=4, kl=True, reps=1)
    results = {}
    for variant in ("vanilla", "mrsp"):
        model, tok, video_config = _model(CPU)
        results[(variant, 1)] = [_worker(model, tok, video_config, {4: paths}, variant, 1, shape)]
    return results, shape


def test_vision_passes_per_prompt_are_counted(measured):
    results, shape = measured
    vanilla, mrsp = results[("vanilla", 1)][0][4], results[("mrsp", 1)][0][4]
    per_video = vanilla["patches_per_video"]
    assert per_video == mrsp["patches_per_video"] > 0
    # MR-SP: one encode per video per step. Vanilla: one per rollout (G) and per sequence of the reference
    # and update prefills (G each, one PPO epoch; the on-policy update needs no old-logprob prefill).
    assert mrsp["patches"] == shape.prompts * per_video
    assert vanilla["patches"] == shape.prompts * per_video * 3 * shape.n


def test_rows_report_speedup_against_vanilla_and_the_passes(measured):
    results, shape = measured
    rows = _rows(results, [("vanilla", 1), ("mrsp", 1)], [4], shape, CPU)
    assert [r.impl for r in rows] == ["vanilla (re-encode, no SP)", "MR-SP sp=1"]
    assert rows[0].speedup == pytest.approx(1.0) and rows[1].speedup > 0
    assert "vision passes/prompt 9.0" in rows[0].note and "vision passes/prompt 1.0" in rows[1].note
    assert all(r.median_ms > 0 for r in rows)


def test_cli_rejects_bad_frames_in_one_line(tmp_path):
    result = run_cli("bench", "rl-step", "--frames", "1,8", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --frames 1,8: a video needs at least 2 frames (one temporal patch)"
    ]
