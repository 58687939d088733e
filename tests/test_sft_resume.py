"""`--resume auto` continues an SFT run exactly: 6 steps straight == 3 steps, a crash, a resume and 3 more
(same losses, same final weights, bitwise on CPU), and a run folder is never reused by accident."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import longrl.sft.trainer as trainer
from longrl.errors import ConfigError
from longrl.sft.trainer import run_sft
from tests.train_fixtures import make_train_setup, sft_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_train_setup(tmp_path_factory.mktemp("sft"))


def losses(run_dir) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    ]


# 2 rows per step over 6 rows: step 4 starts the second epoch (a new permutation), grad clipping is active,
# and the cosine schedule depends on the step count: all of it must survive the resume.
EXTRA = {"run.steps": 6, "run.save_every": 3, "optim.schedule": "cosine", "optim.warmup_steps": 1,
         "optim.max_grad_norm": 1.0, "optim.weight_decay": 0.1}  # fmt: skip


def test_three_steps_crash_resume_three_equals_six_straight(setup, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_sft(sft_config(setup, straight, EXTRA))

    resumed = tmp_path / "resumed"
    real_step, calls = trainer.sft_step, {"n": 0}

    def crash_at_step_4(ctx):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill during step 4")
        return real_step(ctx)

    monkeypatch.setattr(trainer, "sft_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_sft(sft_config(setup, resumed, EXTRA))
    monkeypatch.setattr(trainer, "sft_step", real_step)
    assert [s for s, _ in losses(resumed)] == [1, 2, 3]
    assert not (resumed / "final").exists()

    # Without --resume the folder is refused; with it the run continues from step 3.
    with pytest.raises(ConfigError, match="not empty; pass --resume auto to continue it"):
        run_sft(sft_config(setup, resumed, EXTRA))
    summary = run_sft(sft_config(setup, resumed, {**EXTRA, "run.resume": "auto"}))
    assert summary["resumed_from"].endswith("step_00000003")

    assert losses(resumed) == losses(straight)  # the same floats, step by step
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt_a = straight / "checkpoints" / "step_00000006"
    ckpt_b = resumed / "checkpoints" / "step_00000006"
    state_a = json.loads((ckpt_a / "trainer_state.json").read_text())
    state_b = json.loads((ckpt_b / "trainer_state.json").read_text())
    assert state_a["data_positions"] == state_b["data_positions"] and state_a["step"] == 6
    opt_a = torch.load(ckpt_a / "optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(ckpt_b / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)


def test_a_folder_with_other_files_is_never_used(setup, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a run")
    with pytest.raises(ConfigError, match="not from a longrl run"):
        run_sft(sft_config(setup, out, {"run.resume": "auto"}))
    assert (out / "notes.txt").read_text() == "not a run"
