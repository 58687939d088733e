"""`--nproc N` re-runs the command under torchrun (cli/launch.py)."""

from __future__ import annotations

import sys
import time

import pytest
from longrl.cli import launch

from longrl.errors import ConfigError


def test_single_node_is_standalone():
    assert launch.torchrun_args() == ["--standalone"]


def test_multi_node_uses_a_c10d_rendezvous():
    args = launch.torchrun_args(nnodes=2, node_rank=1, rdzv_endpoint="head:29400", rdzv_id="job7")
    assert args == [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=head:29400",
        "--rdzv-id=job7",
        "--node-rank=1",
    ]


@pytest.mark.parametrize("kwargs", [{"nnodes": 0}, {"nnodes": 2}])
def test_bad_node_flags_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        launch.torchrun_args(**kwargs)


def test_no_relaunch_for_one_process_or_inside_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert launch.relaunch_under_torchrun(1) is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.under_torchrun()
    assert launch.relaunch_under_torchrun(2) is None
    with pytest.raises(ConfigError, match="--nproc"):
        launch.relaunch_under_torchrun(0)


def test_relaunch_runs_the_same_command_on_n_workers(monkeypatch, tmp_path, capfd):
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    # `--nproc` in the command itself must reach the workers, not torchrun.
    monkeypatch.setattr(sys, "argv", ["longrl", "eval", "--nproc", "2", "--help"])
    assert launch.relaunch_under_torchrun(2) == 0
    out = capfd.readouterr().out
    # Each of the two workers ran `longrl eval --help` itself.
    assert out.count("Usage:") == 2


def test_a_mistake_the_workers_find_is_one_line_and_exit_2(monkeypatch, tmp_path, capfd):
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    # Each worker runs the command and meets the same user mistake (a missing video).
    monkeypatch.setattr(sys, "argv", ["longrl", "video", "inspect", str(tmp_path / "missing.mp4")])
    assert launch.spawn_local(2) == 2
    err = capfd.readouterr().err
    assert err.count("error:") == 1 and "missing.mp4" in err
    assert "Traceback" not in err


def test_a_crashed_worker_stops_the_others(monkeypatch, tmp_path):
    # Worker 0 exits 3 at once; worker 1 would sleep for a minute: the launcher stops it and returns 3.
    script = tmp_path / "fake_app.py"
    script.write_text(
        "import os, sys, time\nif os.environ['RANK'] == '0':\n    sys.exit(3)\ntime.sleep(60)\n"
    )
    monkeypatch.setattr(sys, "argv", ["longrl"])
    real_popen = launch.subprocess.Popen
    monkeypatch.setattr(
        launch.subprocess, "Popen", lambda cmd, env: real_popen([sys.executable, str(script)], env=env)
    )
    start = time.monotonic()
    assert launch.spawn_local(2) == 3
    assert time.monotonic() - start < 30
