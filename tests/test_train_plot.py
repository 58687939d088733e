"""`plot_run` / `longrl plot`: a valid PNG from a synthetic metrics.jsonl; one-line errors (exit 2)."""

from __future__ import annotations

import json
import math
import struct

import pytest
from helpers import run_cli

from longrl.errors import ConfigError
from longrl.train.plot import plot_run, smooth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_run(run, records) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def rl_records(n: int = 30) -> list[dict]:
    return [
        {"step": s, "time": 1000.0 + s, "reward": s / n + 0.1 * math.sin(s), "reward/accuracy": s / (2 * n),
         "reward/format": min(1.0, s / 10), "kl": 0.01 * s}
        for s in range(1, n + 1)
    ]  # fmt: skip


def test_smooth_hand_computed():
    # weight 0.5: s1 = 0.5*1 / (1-0.5) = 1; s2 = (0.5*0.5 + 0.5*3) / (1-0.25) = 1.75/0.75
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])
    assert smooth([1.0, 3.0, 2.0], 0.0) == [1.0, 3.0, 2.0]
    out = smooth([1.0, math.nan, 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx(1.75 / 0.75)


def test_default_reward_panels(tmp_path):
    run = tmp_path / "run"
    write_run(run, rl_records())
    out = plot_run(run)
    assert out == run / "rewards.png"
    assert png_size(out) == (700, 3 * 260)  # figure 7 x 2.6 in per panel at 100 dpi: three reward panels
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "rewards.png"]  # no temp file left


def test_chosen_keys_and_out_path(tmp_path):
    run = tmp_path / "run"
    write_run(run, rl_records())
    out = plot_run(run, out=tmp_path / "plots" / "kl.png", keys=["kl"])
    assert png_size(out) == (700, 260)


def test_sft_run_falls_back_to_loss_and_handles_repeats_and_nulls(tmp_path):
    run = tmp_path / "sft"
    records = [{"step": s, "loss": 3.0 / s} for s in range(1, 8)]
    records += [{"step": 4, "loss": None}, {"step": 5, "loss": 0.1}]  # a resumed run logged 4, 5 again
    write_run(run, records)
    assert png_size(plot_run(run)) == (700, 260)


@pytest.mark.parametrize(
    "setup, keys, message",
    [
        (lambda run: None, None, r"run folder .* does not exist"),
        (lambda run: run.mkdir(), None, r"has no metrics\.jsonl; is it a training run folder\?"),
        (lambda run: write_run(run, []), None, r"has no metrics yet"),
        (lambda run: write_run(run, [{"step": 1, "kl": 0.1}]), None, r"has none of reward, .*it has: kl\)"),
        (lambda run: write_run(run, rl_records(3)), ["reward", "rewrd"], r"has no rewrd \(it has: reward, "),
    ],
)
def test_errors(tmp_path, setup, keys, message):
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(ConfigError, match=message):
        plot_run(run, keys=keys)
    with pytest.raises(ConfigError, match=r"smoothing must be in \[0, 1\)"):
        plot_run(run, smoothing=1.0)


def test_cli(tmp_path):
    run = tmp_path / "run"
    write_run(run, rl_records(12))
    ok = run_cli("plot", str(run), "--keys", "reward,kl", "--out", "curves.png", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "wrote curves.png"
    assert png_size(tmp_path / "curves.png") == (700, 2 * 260)
    missing = run_cli("plot", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: run folder {tmp_path / 'nope'} does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_metrics = run_cli("plot", str(empty), cwd=tmp_path)
    assert no_metrics.returncode == 2 and len(no_metrics.stderr.strip().splitlines()) == 1
