"""Training configs (longrl/train/config.py): defaults, YAML + overrides, validation naming the key, round trip."""

from __future__ import annotations

import dataclasses

import pytest

from longrl.errors import ConfigError
from longrl.rl.rewards import RewardConfig
from longrl.train.config import RLConfig, SFTConfig
from longrl.train.config_io import load_config, save_config


def test_defaults_match_the_documented_values():
    sft, rl = SFTConfig(), RLConfig()
    assert (sft.batch_size, sft.grad_accum, sft.max_response_tokens) == (4, 1, 512)
    assert (sft.data.frames, sft.data.on_bad_row, sft.parallel.sp, sft.run.steps) == (64, "skip", 1, 100)
    assert sft.model.lora.rank == 0 and not sft.model.train_vision
    assert (rl.rollout.n, rl.rollout.engine, rl.algo.advantage, rl.algo.kl_estimator) == (
        8,
        "hf",
        "grpo",
        "k3",
    )
    assert (rl.algo.clip_low, rl.algo.clip_high, rl.algo.dual_clip) == (0.2, 0.28, 3.0)
    assert rl.reward == RewardConfig()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "optim:\n  lr: 1.0e-4\n  warmup_steps: 3\ndata:\n  frames: 8\n  on_bad_row: fail\n"
        "model:\n  lora:\n    rank: 4\nrollout:\n  n: 4\nreward:\n  format_weight: 0.5\n"
    )
    cfg = load_config(RLConfig, path, {"data.frames": "16", "run.steps": 7, "optim.lr": None})
    assert cfg.data.frames == 16  # the override wins
    assert cfg.optim.lr == 1e-4  # a None override (flag not given) leaves the YAML value
    assert cfg.optim.warmup_steps == 3 and cfg.data.on_bad_row == "fail" and cfg.model.lora.rank == 4
    assert cfg.rollout.n == 4 and cfg.reward.format_weight == 0.5 and cfg.run.steps == 7


def test_unknown_yaml_key_names_it_with_a_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  frame: 8\n")
    with pytest.raises(
        ConfigError, match=r"run.yaml: unknown key 'data.frame' \(did you mean 'data.frames'\?\)"
    ):
        load_config(SFTConfig, path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.frames", 0, "data.frames must be >= 1"),
        ("data.fps", -1.0, "data.fps must be > 0"),
        ("data.on_bad_row", "ignore", "on_bad_row"),
        ("data.video_backend", "ffmpeg", "video_backend"),
        ("model.dtype", "int8", "model.dtype"),
        ("parallel.sp", 0, "parallel.sp must be >= 1"),
        ("parallel.sp_attn", "star", "sp_attn"),
        ("run.steps", 0, "run.steps must be >= 1"),
        ("run.save_every", -1, "run.save_every must be >= 0"),
        ("run.device", "tpu", "run.device"),
        ("run.out", " ", "run.out"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("grad_accum", "two", "grad_accum"),
        ("optim.lr", "abc", "optim.lr"),
        ("data.ptx", "rows.jsonl", "data.ptx is for `train rl`"),
    ],
)
def test_bad_sft_values_are_one_line_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(SFTConfig, None, {key: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout.n": 0}, "rollout.n must be >= 1"),
        ({"rollout.top_p": 1.5}, "rollout.top_p"),
        ({"rollout.temperature": 0}, "rollout.temperature must be > 0"),
        ({"algo.advantage": "ppo"}, "advantage"),
        ({"algo.clip_low": 1.0}, "algo.clip_low must be < 1"),
        ({"algo.dual_clip": 0.5}, "algo.dual_clip must be > 1"),
        ({"algo.tis_cap": 0.5}, "algo.tis_cap must be >= 1"),
        ({"algo.kl_coef": -0.1}, "algo.kl_coef must be >= 0"),
        ({"algo.ptx_coef": -1.0}, "algo.ptx_coef must be >= 0"),
        ({"algo.ptx_coef": 1.0}, "algo.ptx_coef > 0 needs data.ptx"),
        ({"data.ptx": "rows.jsonl"}, "data.ptx is set but algo.ptx_coef is 0"),
        ({"parallel.nproc": 3, "parallel.sp": 2}, r"parallel.sp \(2\) must divide the world size .* = 3"),
        ({"model.train_vision": True, "model.lora.rank": 8}, "train_vision cannot be combined with LoRA"),
    ],
)
def test_bad_rl_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(RLConfig, None, overrides)
    assert "\n" not in str(err.value)


def test_dual_clip_can_be_turned_off_and_sp_can_divide_a_multi_node_world():
    cfg = load_config(RLConfig, None, {"algo.dual_clip": "none", "parallel.nproc": 2, "parallel.nnodes": 2,
                                       "parallel.sp": 4})  # fmt: skip
    assert cfg.algo.dual_clip is None and cfg.parallel.sp == 4


@pytest.mark.parametrize("cls", [SFTConfig, RLConfig])
def test_saved_config_loads_back_equal(tmp_path, cls):
    overrides = {"model.path": "m", "data.train": "t.jsonl", "data.fps": 1.5, "optim.max_grad_norm": "none",
                 "model.lora.rank": 2, "model.lora.targets": "q_proj,v_proj", "run.resume": "auto"}  # fmt: skip
    if cls is RLConfig:
        overrides |= {"reward.custom": None, "algo.mini_batch_size": 4, "rollout.prompt_batch_size": 2}
    cfg = load_config(cls, None, overrides)
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(cls, path)
    assert again == cfg
    assert again.model.lora.targets == ["q_proj", "v_proj"] and again.optim.max_grad_norm is None
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
