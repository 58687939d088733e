"""MetricsLogger (metrics.jsonl lines, resume truncation, console row, TensorBoard's clear error), StepTimer,
progress bar stand-in."""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import torch

from longrl.errors import ConfigError
from longrl.train.metrics import (
    MetricsLogger,
    StepTimer,
    format_row,
    format_value,
    progress,
    read_metrics,
)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_writes_one_json_line_per_step(tmp_path):
    run = tmp_path / "run"
    logger = MetricsLogger(run, enabled=True, console=False)
    before = time.time()
    logger.log(1, {"reward": 0.5, "kl": torch.tensor(0.25), "n": np.int64(3), "flag": True})
    logger.log(2, {"reward": np.float32(1.5), "loss": float("nan"), "bad": float("inf")})
    # Flushed after each line: readable before close().
    records = lines(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0] == {"step": 1, "time": records[0]["time"], "reward": 0.5, "kl": 0.25, "n": 3, "flag": 1}
    assert before <= records[0]["time"] <= time.time()
    assert records[1]["reward"] == 1.5 and records[1]["loss"] is None and records[1]["bad"] is None
    logger.close()
    logger.close()  # twice is fine
    # Strict JSON: no NaN/Infinity tokens.
    assert (
        "NaN" not in (run / "metrics.jsonl").read_text()
        and "Infinity" not in (run / "metrics.jsonl").read_text()
    )


def test_reopening_appends(tmp_path):
    with MetricsLogger(tmp_path, enabled=True, console=False) as logger:
        logger.log(1, {"a": 1.0})
    with MetricsLogger(tmp_path, enabled=True, console=False) as logger:
        logger.log(2, {"a": 2.0})
    assert [r["a"] for r in lines(tmp_path / "metrics.jsonl")] == [1.0, 2.0]


def test_disabled_logger_writes_and_prints_nothing(tmp_path, capsys):
    logger = MetricsLogger(tmp_path / "run", enabled=False, console=True)
    logger.log(1, {"reward": 1.0})
    logger.truncate_after(0)
    logger.close()
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr().out == ""


def test_truncate_after_drops_later_steps_and_cut_lines(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, console=False)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss": ')  # a line cut by a kill
    logger.truncate_after(3)
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    logger.log(4, {"loss": 40.0})  # the resumed run goes on appending
    logger.close()
    assert [(r["step"], r["loss"]) for r in lines(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left
    MetricsLogger(tmp_path / "empty", enabled=True).truncate_after(3)  # no file yet: nothing to do


def test_read_metrics_skips_unreadable_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\nnot json\n[1, 2]\n{"step": 2, "a": 2}\n{"step": 3,')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_console_row_text(tmp_path, capsys):
    metrics = {"reward": 0.123456, "kl": 0.00012345, "time/rollout": 12.5, "n": 7, "loss": None}
    assert format_row(3, metrics, total_steps=10) == (
        "step 3/10  reward 0.1235  kl 0.0001234  time/rollout 12.5  n 7  loss nan"
    )
    assert format_row(3, metrics, keys=["kl", "missing", "reward"]) == "step 3  kl 0.0001234  reward 0.1235"
    assert format_value(123456.0) == "1.235e+05" and format_value(2) == "2"
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=4, console_keys=["reward", "kl"])
    logger.log(2, {"reward": 1.0, "kl": 0.5, "other": 3.0})
    logger.close()
    assert capsys.readouterr().out == "step 2/4  reward 1  kl 0.5\n"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_is_a_clear_config_error(tmp_path):
    for enabled in (True, False):  # every rank fails the same way, not only the one that writes
        with pytest.raises(ConfigError) as info:
            MetricsLogger(tmp_path, enabled=enabled, tensorboard=True)
        assert str(info.value) == "--tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "metrics.jsonl").exists()


def test_step_timer_sections(monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 21.25, 30.0, 30.25, 40.0, 41.0])
    monkeypatch.setattr("longrl.train.metrics.time.perf_counter", lambda: next(clock))
    timer = StepTimer()
    with timer.section("rollout"):
        pass
    with timer.section("update"):
        pass
    with pytest.raises(ValueError), timer.section("rollout"):  # an exception still counts its time
        raise ValueError("x")
    assert timer.totals() == {"time/rollout": 0.75, "time/update": 1.25}
    timer.reset()
    assert timer.totals() == {}
    with timer.section("ref"):
        pass
    assert timer.totals() == {"time/ref": 1.0}


def test_step_timer_measures_real_time():
    timer = StepTimer(sync_cuda=True)  # no CUDA here: the sync is skipped
    with timer.section("sleep"):
        time.sleep(0.05)
    assert 0.04 <= timer.totals()["time/sleep"] < 1.0


def test_progress_is_silent_when_disabled_or_not_a_terminal(capsys):
    for enabled in (False, True):  # pytest's captured stdout is not a terminal
        with progress(5, "train", enabled) as bar:
            for _ in range(5):
                bar.advance()
            bar.advance(2)
    assert capsys.readouterr().out == ""
