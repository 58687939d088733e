"""`longrl train sft|rl` as users run it: flags over YAML, one-line errors with exit code 2, a real run."""

from __future__ import annotations

import json

import pytest
import yaml
from longrl.cli.train import build_config, parse_sets

from longrl.errors import ConfigError
from longrl.train.config import RLConfig, SFTConfig
from tests.helpers import run_cli, run_cli_here
from tests.train_fixtures import make_train_setup, write_rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_train_setup(tmp_path_factory.mktemp("cli"), num_rows=4, num_videos=2)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_precedence_yaml_then_set_then_flags_and_unset_flags_do_not_clobber(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  frames: 8\n  on_bad_row: fail\noptim:\n  lr: 2.0e-4\nrun:\n  steps: 30\n")
    flags = {"run.steps": 5, "data.frames": None, "optim.lr": None, "data.on_bad_row": None}
    cfg = build_config(SFTConfig, path, ["data.frames=16", "optim.warmup_steps=2", "run.steps=9"], flags)
    assert cfg.run.steps == 5  # a named flag beats --set and YAML
    assert cfg.data.frames == 16 and cfg.optim.warmup_steps == 2  # --set beats YAML
    assert cfg.optim.lr == 2e-4 and cfg.data.on_bad_row == "fail"  # flags left unset keep the YAML values
    cfg = build_config(RLConfig, None, ["rollout.n=4", "algo.dual_clip=none"], {"algo.kl_coef": 0.05})
    assert (cfg.rollout.n, cfg.algo.dual_clip, cfg.algo.kl_coef) == (4, None, 0.05)


def test_set_needs_key_equals_value():
    assert parse_sets(["a.b=1=2", " c = x "]) == {"a.b": "1=2", "c": "x"}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_sets(["optim.lr"])


def assert_one_line(code_and_err: tuple[int, str], *needles: str) -> None:
    code, err = code_and_err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_configs_exit_2_with_one_line(setup, tmp_path, capsys):
    model, data, root = str(setup["model"]), str(setup["data"]), str(setup["video_root"])
    bad_yaml = tmp_path / "run.yaml"
    bad_yaml.write_text("optim:\n  lrr: 1.0e-4\n")
    # Once through a fresh `longrl` process, as users run it; the other mistakes in this process (faster).
    assert_one_line_error(
        run_cli("train", "sft", "--config", str(bad_yaml), cwd=tmp_path),
        "run.yaml: unknown key 'optim.lrr'",
        "did you mean 'optim.lr'",
    )
    assert_one_line(run_cli_here(capsys, "train", "sft", "--frames", "0"), "data.frames must be >= 1")
    assert_one_line(
        run_cli_here(capsys, "train", "rl", "--set", "algo.clip_low=2"), "algo.clip_low must be < 1"
    )
    assert_one_line(run_cli_here(capsys, "train", "sft", "--set", "optim.lr"), "expected KEY=VALUE")
    assert_one_line(
        run_cli_here(capsys, "train", "rl", "--gpu-memory-utilization", "1.5"),
        "rollout.gpu_memory_utilization must be in (0, 1], got 1.5",
    )
    assert_one_line(
        run_cli_here(capsys, "train", "rl", "--max-model-len", "100", "--max-new-tokens", "200"),
        "rollout.max_model_len (100) must exceed rollout.max_new_tokens (200)",
    )
    assert_one_line(
        run_cli_here(capsys, "train", "sft", "--model", str(tmp_path / "nope"), "--data", data),
        "model folder",
        "does not exist",
    )
    assert_one_line(
        run_cli_here(capsys, "train", "sft", "--model", model, "--data", str(tmp_path / "none.jsonl")),
        "none.jsonl not found",
    )
    assert_one_line(
        run_cli_here(capsys, "train", "rl", "--model", model, "--data", data, "--video-root", root, "--nproc", "2",
            "--sp", "3"),
        "parallel.sp (3) must divide the world size",
    )  # fmt: skip
    assert_one_line(
        run_cli_here(capsys, "train", "sft", "--model", model, "--data", data, "--video-root", root, "--nnodes", "2",
            "--rdzv-endpoint", "localhost:29400"),
        "start it with torchrun on every node",
    )  # fmt: skip
    assert_one_line(
        run_cli_here(capsys, "train", "sft", "--model", model, "--data", data, "--video-root", root, "--sp", "2",
            "--device", "cpu", "--out", str(tmp_path / "r")),
        "--sp 2 needs 2 processes",
    )  # fmt: skip


def test_on_bad_row_fail_names_the_row(setup, tmp_path):
    rows = setup["data"].read_text().splitlines()
    bad = write_rows(tmp_path / "bad.jsonl", [*rows[:2], {"id": "x", "question": "q", "video": "v0.mp4"}])
    common = ["train", "sft", "--model", str(setup["model"]), "--data", str(bad), "--video-root",
              str(setup["video_root"]), "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    assert_one_line_error(
        run_cli(*common, "--on-bad-row", "fail", cwd=tmp_path), "bad.jsonl:3: missing_field"
    )
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_small_run_writes_the_run_folder(setup, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"frames": 4, "isolate_decode": False},
                "run": {"steps": 50, "save_every": 0, "progress": False},
                "optim": {"lr": 5e-4},
            }
        )
    )
    out = tmp_path / "run"
    args = ["train", "sft", "--config", str(config), "--model", str(setup["model"]), "--data",
            str(setup["data"]), "--video-root", str(setup["video_root"]), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--device", "cpu", "--set", "max_response_tokens=32"]  # fmt: skip
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["steps"] == 2 and saved["batch_size"] == 2 and saved["max_response_tokens"] == 32
    assert saved["optim"]["lr"] == 5e-4 and saved["data"]["frames"] == 4  # YAML values the flags left alone
    assert saved["model"]["path"] == str(setup["model"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["bad_rows"] == 0 and summary["unreadable_videos"] == 0
    assert (out / "final" / "model.safetensors").is_file()
    assert "unreadable videos skipped: 0" in result.stdout
    # The same command again must not reuse the folder.
    assert_one_line(run_cli_here(capsys, *args), "is not empty", "--resume auto")
