"""`--resume auto` of an FSDP run (dp = 2, gloo, CPU) continues exactly: `longrl train rl` with FSDP for 4 steps
straight equals 2 steps, an interruption in step 3, a resume from the step-2 checkpoint and 2 more steps.

The run uses what a sharded run touches: rollouts with the whole policy gathered, a KL reference loaded from
the model folder and sharded too, dynamic sampling, two PPO epochs of two mini-batches, warmup + cosine LR,
checkpoints gathered from the shards (model and optimizer) and scattered back on resume, and the final HF
folder gathered to rank 0. Every logged metric (times and the cache hit rate excluded: a resumed process
starts with an empty embedding cache) and every final weight must be bitwise equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_rl_trainer import rl_config
from train_fixtures import make_train_setup, write_rows

from longrl.parallel.launch import run_local


class _Interrupt(Exception):
    pass


def _worker(paths: dict, root: str) -> list[str]:
    import torch.distributed as dist

    import longrl.rl.trainer as trainer

    dist.init_process_group("gloo")
    extra = {"parallel.fsdp": True, "run.steps": 4, "run.save_every": 2}
    trainer.run_rl(rl_config(paths, Path(root) / "straight", **extra))

    real_step = trainer.rl_step

    def stop_at_three(ctx, setup, step):
        if step == 3:
            raise _Interrupt
        return real_step(ctx, setup, step)

    trainer.rl_step = stop_at_three
    try:
        trainer.run_rl(rl_config(paths, Path(root) / "resumed", **extra))
    except _Interrupt:
        pass
    finally:
        trainer.rl_step = real_step
    checkpoints = sorted(p.name for p in (Path(root) / "resumed" / "checkpoints").iterdir())
    trainer.run_rl(rl_config(paths, Path(root) / "resumed", **extra, **{"run.resume": "auto"}))
    return checkpoints


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skip = ("time", "cache_hit_rate")
    return [{k: v for k, v in r.items() if k not in skip and not k.startswith("time/")} for r in rows]


@pytest.mark.slow  # two spawned ranks, three short GRPO runs
def test_fsdp_run_resumed_after_step_two_equals_the_straight_run(tmp_path):
    paths = make_train_setup(tmp_path / "setup", num_rows=6, num_videos=2)
    rows = [json.loads(line) for line in paths["data"].read_text().splitlines()]
    write_rows(paths["data"], [{**row, "answer": "A"} for row in rows])  # the reward counts 'a's

    checkpoints = run_local(_worker, 2, paths, str(tmp_path), timeout_s=400)
    assert checkpoints == [["step_00000002"]] * 2  # interrupted in step 3, after the step-2 checkpoint

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert json.loads((straight / "checkpoints" / "step_00000004" / "meta.json").read_text())["sharded"]
    a, b = _rows(straight), _rows(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    assert a[-1]["kl"] > 0  # the sharded reference ran
    final_a = load_file(str(straight / "final" / "model.safetensors"))
    final_b = load_file(str(resumed / "final" / "model.safetensors"))
    assert final_a.keys() == final_b.keys()
    assert all(final_a[k].equal(final_b[k]) for k in final_a)
    initial = load_file(str(paths["model"] / "model.safetensors"))
    assert final_a.keys() == initial.keys()  # the gathered export is a plain HF model folder
    assert any(not final_a[k].equal(initial[k]) for k in initial)  # it trained
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_00000002") and summary["config_changes"] == []
