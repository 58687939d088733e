"""`longrl train rl` (longrl.rl.trainer.run_rl) on CPU with the tiny model: resume is exact, the run folder is
complete, RL-only config rules give one line.

Resume: 6 steps straight vs the same run interrupted after step 3 (an exception out of step 4, after the step-3
checkpoint) and continued with `--resume auto`: every logged metric of steps 1-6 (times excluded) and every
final weight must be bitwise equal (CPU float32 is deterministic; sampling seeds depend on (seed, step, prompt)
only). The cache hit rate is the one exception: the resumed process starts with an empty embedding cache. The run uses KL (reference read back from the model folder), warmup + cosine LR, two PPO epochs of two
mini-batches, dynamic sampling and PPO-ptx (its rows' stream), so each of their states must survive the
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_fixtures import make_train_setup, write_rows

import longrl.rl.trainer as trainer
from longrl.errors import ConfigError, DataError
from longrl.train.config import RLConfig
from longrl.train.config_io import load_config


def letter_share(response: str, answer: str, **_) -> float:
    """Custom reward: share of the response's non-space characters that are the gold letter (any case)."""
    text = response.replace(" ", "")
    return text.lower().count(answer.lower()) / max(len(text), 1)


def rl_config(paths: dict[str, Path], out: Path, **extra) -> RLConfig:
    values = {
        "model.path": str(paths["model"]),
        "data.train": str(paths["data"]),
        "data.video_root": str(paths["video_root"]),
        "data.frames": 2,
        "data.isolate_decode": False,
        "run.out": str(out),
        "run.steps": 6,
        "run.save_every": 3,
        "run.device": "cpu",
        "run.progress": False,
        "optim.lr": 1e-2,
        "optim.warmup_steps": 2,
        "optim.schedule": "cosine",
        "batch_size": 2,
        "rollout.n": 2,
        "rollout.max_new_tokens": 4,
        "rollout.prompt_batch_size": 1,
        "algo.kl_coef": 0.1,
        "algo.ppo_epochs": 2,
        "algo.mini_batch_size": 2,
        "algo.dynamic_sampling": True,
        "algo.max_refill_rounds": 1,
        "reward.custom": f"{__file__}:letter_share",
        "reward.format_weight": 0.0,
        "reward.accuracy_weight": 0.0,
        "data.ptx": str(paths["data"]),
        "algo.ptx_coef": 0.5,
        "algo.ptx_batch_size": 1,
    }
    values.update(extra)
    return load_config(RLConfig, None, values)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_trainer")
    paths = make_train_setup(root, num_rows=6, num_videos=2)
    rows = [json.loads(line) for line in paths["data"].read_text().splitlines()]
    write_rows(paths["data"], [{**row, "answer": "A"} for row in rows])  # the reward counts 'a's
    return paths


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Wall times differ, and so does the cache hit rate: a resumed process starts with an empty memory cache.
    skip = ("time", "cache_hit_rate")
    return [{k: v for k, v in r.items() if k not in skip and not k.startswith("time/")} for r in rows]


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_six_steps_straight_equal_three_then_resume_then_three(paths, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    summary = trainer.run_rl(rl_config(paths, straight))
    assert summary["kind"] == "rl" and summary["steps"] == 6

    resumed = tmp_path / "resumed"
    real_step = trainer.rl_step

    def stop_at_four(ctx, setup, step):
        if step == 4:
            raise _Interrupt
        return real_step(ctx, setup, step)

    monkeypatch.setattr(trainer, "rl_step", stop_at_four)
    with pytest.raises(_Interrupt):
        trainer.run_rl(rl_config(paths, resumed))
    assert [p.name for p in sorted((resumed / "checkpoints").iterdir())] == ["step_00000003"]
    monkeypatch.setattr(trainer, "rl_step", real_step)
    trainer.run_rl(rl_config(paths, resumed, **{"run.resume": "auto"}))

    a, b = _rows(straight), _rows(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert a == b
    assert a[-1]["kl"] > 0  # the reference ran
    # 2 epochs x one mini-batch of 2 sequences per kept group of 2.
    assert all(r["updates"] == 2 * r["groups_kept"] for r in a) and sum(r["groups_kept"] for r in a) > 6
    assert {
        "reward",
        "reward_mean",
        "loss",
        "entropy",
        "clip_frac",
        "response_len",
        "groups_kept",
        "ptx_loss",
    } <= a[0].keys()
    final_a = load_file(str(straight / "final" / "model.safetensors"))
    final_b = load_file(str(resumed / "final" / "model.safetensors"))
    assert final_a.keys() == final_b.keys()
    assert all(final_a[k].equal(final_b[k]) for k in final_a)
    initial = load_file(str(paths["model"] / "model.safetensors"))
    assert any(not final_a[k].equal(initial[k]) for k in initial)  # it did train
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_00000003") and summary["final_metrics"]["reward"] >= 0


def test_unreadable_videos_are_skipped_and_counted(paths, tmp_path):
    rows = [json.loads(line) for line in paths["data"].read_text().splitlines()]
    broken = paths["video_root"] / "broken.mp4"
    broken.write_text("not a video")
    data = write_rows(tmp_path / "rows.jsonl", [*rows[:2], {**rows[2], "id": "bad", "video": "broken.mp4"}])
    quick = {"run.steps": 1, "run.save_every": 0, "optim.warmup_steps": 0, "data.shuffle": False, "batch_size": 3,
             "algo.kl_coef": 0.0, "algo.ppo_epochs": 1, "algo.dynamic_sampling": False}  # fmt: skip
    summary = trainer.run_rl(rl_config({**paths, "data": data}, tmp_path / "run", **quick))
    # The file is the prompts' and the PPO-ptx rows' (rl_config): each stream meets the bad row once.
    assert summary["unreadable_videos"] == 2
    assert [p.split(":")[0] for p in summary["problems"]] == ["row id 'bad'", "ptx row id 'bad'"]
    assert summary["final_metrics"]["groups_total"] == 3  # the bad row was replaced by another
    fail = {**quick, "data.on_bad_row": "fail"}
    with pytest.raises(DataError, match="row id 'bad': unreadable video"):
        trainer.run_rl(rl_config({**paths, "data": data}, tmp_path / "run2", **fail))


def test_train_vision_is_refused_in_one_line(paths, tmp_path):
    with pytest.raises(ConfigError, match="vision tower frozen"):
        trainer.run_rl(rl_config(paths, tmp_path / "run", **{"model.train_vision": True}))
    assert not (tmp_path / "run").exists()


def test_ptx_config_mistakes_are_one_line(paths, tmp_path):
    with pytest.raises(ConfigError, match="algo.ptx_coef > 0 needs data.ptx"):
        rl_config(paths, tmp_path / "run", **{"data.ptx": None})
    with pytest.raises(ConfigError, match="data.ptx is set but algo.ptx_coef is 0"):
        rl_config(paths, tmp_path / "run", **{"algo.ptx_coef": 0.0})
    with pytest.raises(ConfigError, match="algo.ptx_batch_size must be"):
        rl_config(paths, tmp_path / "run", **{"algo.ptx_batch_size": 0})
    with pytest.raises(ConfigError, match="ptx data file .* not found"):
        trainer.run_rl(rl_config(paths, tmp_path / "run", **{"data.ptx": str(tmp_path / "nope.jsonl")}))
    assert not (tmp_path / "run").exists()


def test_policy_weights_fold_lora_and_the_lora_reference_is_the_base_model():
    """What a separate engine (vLLM) receives after an update: plain HF names, LoRA folded in; and the LoRA
    reference scores sequences like the model without adapters (exactly: the same base computation)."""
    import copy

    import torch
    from tiny_model import tiny_model

    import longrl.models as M
    from longrl.models import prompt as P
    from longrl.parallel.groups import single_process_state
    from longrl.parallel.sp_prefill import next_token_targets
    from longrl.rl.reference import Reference
    from longrl.rl.sequences import SequenceBatch
    from longrl.train.lora import LoRAConfig, apply_lora, merge_lora

    model, tok = tiny_model(fresh=True)
    base = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    sent = dict(trainer.policy_weights(model))
    merged = copy.deepcopy(model)
    merge_lora(merged)
    assert sent.keys() == merged.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(sent[k], v) for k, v in merged.state_dict().items())

    ids = torch.tensor([P.build_prompt_ids(tok, "What?", ["a", "b"]) + [50, 51, 52]])
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[0, -3:] = True
    batch = SequenceBatch(ids, torch.ones_like(ids), response, next_token_targets(ids, response),
                          torch.zeros(ids.shape), [], torch.zeros(0, 3, dtype=torch.long), torch.zeros(0),
                          torch.zeros(1), torch.zeros(1, dtype=torch.long), tok.pad_token_id)  # fmt: skip
    state = single_process_state()
    lora_ref = Reference.lora_base(M.wrap_model(model)).logprobs(batch, state, temperature=1.0)
    base_ref = Reference(M.wrap_model(base)).logprobs(batch, state, temperature=1.0)
    policy = Reference(M.wrap_model(model)).logprobs(batch, state, temperature=1.0)
    assert torch.equal(lora_ref, base_ref) and not torch.allclose(policy, base_ref)
