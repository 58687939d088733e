"""A resumed run's config against the one it continues (longrl/train/resume.py, `--resume`).

Allowed changes (lr, steps, logging, ...) are applied, printed one line per key and recorded in the
checkpoints and summary.json, across several resumes; changes that break the continuation (seed, LoRA,
data, ...) are refused with one line naming the key and both values, exit code 2, nothing written.
Single process, the tiny model, 2-step SFT runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from longrl.errors import ConfigError
from longrl.sft.trainer import run_sft
from longrl.train.resume import config_changes
from tests.helpers import run_cli_here
from tests.train_fixtures import make_train_setup, sft_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_train_setup(tmp_path_factory.mktemp("resume_config"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_allowed_changes_are_applied_printed_and_recorded(setup, tmp_path, capsys):
    out = tmp_path / "run"
    base = {"run.steps": 2, "run.save_every": 2}
    run_sft(sft_config(setup, out, base))
    capsys.readouterr()

    changed = {**base, "run.steps": 4, "optim.lr": 5e-4, "run.log_every": 2, "run.resume": "auto"}
    summary = run_sft(sft_config(setup, out, changed))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume:")]
    assert printed == [
        "resume: optim.lr 0.001 -> 0.0005",
        "resume: run.steps 2 -> 4",
        "resume: run.log_every 1 -> 2",
    ]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 4]  # log_every 2 from step 3 on
    assert [r["lr"] for r in rows] == [1e-3, 1e-3, 5e-4]  # the new lr is used, not the checkpoint's
    first = [
        {"step": 2, "key": "optim.lr", "old": 1e-3, "new": 5e-4},
        {"step": 2, "key": "run.steps", "old": 2, "new": 4},
        {"step": 2, "key": "run.log_every", "old": 1, "new": 2},
    ]
    assert summary["config_changes"] == first
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 5e-4  # config.yaml is the new effective config

    # A second resume keeps the history (it travels in the checkpoints) and adds its own change.
    summary = run_sft(sft_config(setup, out, {**changed, "run.steps": 5}))
    assert summary["config_changes"] == [*first, {"step": 4, "key": "run.steps", "old": 4, "new": 5}]
    assert json.loads((out / "summary.json").read_text())["config_changes"] == summary["config_changes"]


def test_changes_that_break_the_continuation_are_refused_in_one_line(setup, tmp_path, capsys):
    out = tmp_path / "run"
    run_sft(sft_config(setup, out, {"run.steps": 2, "run.save_every": 2}))
    before = _snapshot(out)

    code, err = run_cli_here(
        capsys, "train", "sft", "--model", str(setup["model"]), "--data", str(setup["data"]),
        "--video-root", str(setup["video_root"]), "--out", str(out), "--resume", "auto", "--seed", "1",
        "--device", "cpu", "--steps", "4",
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "run.seed 0 -> 1" in lines[0] and "new --out folder" in lines[0]
    assert "run.steps" not in lines[0]  # allowed changes are not part of the refusal

    resume = {"run.steps": 4, "run.resume": "auto"}
    with pytest.raises(ConfigError, match=r"model\.lora\.rank 0 -> 4"):
        run_sft(sft_config(setup, out, {**resume, "model.lora.rank": 4}))
    other_data = tmp_path / "other.jsonl"
    other_data.write_text(setup["data"].read_text())
    with pytest.raises(ConfigError, match=rf"data\.train {setup['data']} -> {other_data}"):
        run_sft(sft_config(setup, out, {**resume, "data.train": str(other_data)}))
    assert _snapshot(out) == before  # nothing was written


def test_paths_compare_by_file_and_launch_settings_are_not_compared(setup, tmp_path):
    saved = {"model": {"path": str(setup["model"])}, "run": {"out": "a", "progress": True, "seed": 0}}
    spelled = str(setup["model"].parent / ".." / setup["model"].parent.name / setup["model"].name)
    current = {"model": {"path": spelled}, "run": {"out": "b", "progress": False, "seed": 0}}
    assert config_changes(saved, current) == []
    current["run"]["seed"] = 3
    assert [(c.key, c.old, c.new) for c in config_changes(saved, current)] == [("run.seed", 0, 3)]
    # How the processes were started (--nproc 8, or torchrun itself; 2 nodes x 4 or 1 x 8) is not compared:
    # load_checkpoint checks the world size, which is what a checkpoint depends on.
    launch = {"parallel": {"nproc": 8, "nnodes": 1, "sp": 4}}
    assert config_changes(launch, {"parallel": {"nproc": 1, "nnodes": 2, "sp": 4}}) == []


def test_a_resume_compares_with_the_config_the_checkpoint_was_written_under(setup, tmp_path, capsys):
    """config.yaml is rewritten at every start; a start that changed lr and died before its next checkpoint
    must not make the next resume forget that lr differs from the checkpoint's."""
    out = tmp_path / "run"
    run_sft(sft_config(setup, out, {"run.steps": 2, "run.save_every": 2}))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["optim"]["lr"] = 5e-4  # what the dead start wrote
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    resumed = {"run.steps": 3, "run.save_every": 2, "optim.lr": 5e-4, "run.resume": "auto"}
    summary = run_sft(sft_config(setup, out, resumed))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume:")]
    assert printed == ["resume: optim.lr 0.001 -> 0.0005", "resume: run.steps 2 -> 3"]
    assert [(c["key"], c["old"], c["new"]) for c in summary["config_changes"]] == [
        ("optim.lr", 1e-3, 5e-4),
        ("run.steps", 2, 3),
    ]
