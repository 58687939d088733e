"""Checkpoints: exact resume (state dicts, RNG streams, continued training), atomicity, pruning, per-rank RNG
under 2 gloo processes, and one-line errors for broken checkpoints. References: the saving process's own
state and the random numbers it draws next (compared exactly)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from longrl.errors import ConfigError
from longrl.parallel.groups import init_parallel, single_process_state
from longrl.parallel.launch import run_local
from longrl.train import checkpoint as C
from longrl.train.checkpoint import (
    capture_rng_state,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from longrl.train.optim import OptimConfig, build_optimizer, build_scheduler

SINGLE = single_process_state()
OPTIM = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=2)
TOTAL_STEPS = 10


class TiedNet(nn.Module):
    """Embedding tied to the output head (the state dict holds one tensor under two names) plus a buffer."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(7, 5)
        self.body = nn.Sequential(nn.Linear(5, 5), nn.LayerNorm(5))
        self.head = nn.Linear(5, 7, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("counter", torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(ids)))


def make(seed: int):
    model = TiedNet(seed)
    optimizer = build_optimizer(model, OPTIM)
    scheduler = build_scheduler(optimizer, OPTIM, TOTAL_STEPS)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> float:
    """One step whose data comes from all three RNGs, so a wrong RNG restore changes the weights."""
    ids = torch.randint(0, 7, (3, 4))
    noise = float(np.random.rand()) + random.random()
    loss = (model(ids).logsumexp(-1).mean() - noise) ** 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    model.counter += 1
    return loss.item()


def draws() -> tuple:
    return (random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3).tolist())


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        elif isinstance(x, dict):
            assert_same_state(x, y)
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            for u, v in zip(x, y, strict=True):
                assert_same_state(u, v)
        else:
            assert x == y, key


def test_save_load_restores_everything_exactly(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    model, optimizer, scheduler = make(seed=0)
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    trainer_state = {"step": 3, "data": {"epoch": 0, "offset": 12}, "note": "x"}
    at_save = capture_rng_state()
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state=trainer_state, state=SINGLE)  # fmt: skip
    assert path == checkpoint_dir(tmp_path, 3) == tmp_path / "checkpoints" / "step_00000003"
    expected_draws = draws()
    restore_rng_state(at_save)  # continue training from the saved RNG state
    losses = [train_step(model, optimizer, scheduler) for _ in range(2)]

    # A fresh process's view: other initial weights, other RNG states.
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    model2, optimizer2, scheduler2 = make(seed=5)
    restored = load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2, state=SINGLE)
    assert restored == trainer_state
    assert model2.head.weight is model2.embed.weight  # tying survives loading
    assert draws() == expected_draws

    model3, optimizer3, scheduler3 = make(seed=7)
    load_checkpoint(path, model=model3, optimizer=optimizer3, scheduler=scheduler3, state=SINGLE)
    fresh_losses = [train_step(model3, optimizer3, scheduler3) for _ in range(2)]
    assert fresh_losses == losses
    assert_same_state(model3.state_dict(), model.state_dict())
    assert_same_state(optimizer3.state_dict(), optimizer.state_dict())
    assert_same_state(scheduler3.state_dict(), scheduler.state_dict())


def test_state_dicts_identical_right_after_load(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    for _ in range(2):
        train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={"step": 2}, state=SINGLE)  # fmt: skip
    model2, optimizer2, scheduler2 = make(seed=3)
    load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2, state=SINGLE)
    assert_same_state(model2.state_dict(), model.state_dict())
    assert_same_state(optimizer2.state_dict(), optimizer.state_dict())
    assert_same_state(scheduler2.state_dict(), scheduler.state_dict())
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 2 and meta["world_size"] == 1 and "rng_rank0.pt" in meta["files"]


def test_rng_capture_restore_roundtrip():
    state = capture_rng_state()
    first = draws()
    restore_rng_state(state)
    assert draws() == first


def save(tmp_path, step, model, optimizer, scheduler, **kwargs):
    return save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={"step": step}, state=SINGLE, **kwargs)  # fmt: skip


def test_latest_ignores_temp_and_incomplete_folders(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    assert latest_checkpoint(tmp_path) is None
    save(tmp_path, 4, model, optimizer, scheduler)
    parent = tmp_path / "checkpoints"
    # What a kill leaves: a temp folder with some files, and a step folder without meta.json.
    stale = parent / ".tmp_step_00000009"
    shutil.copytree(parent / "step_00000004", stale)
    (parent / "step_00000008").mkdir()
    (parent / "step_00000008" / "model.safetensors").write_bytes(b"partial")
    (parent / "notes.txt").write_text("user file")
    assert latest_checkpoint(tmp_path) == parent / "step_00000004"
    save(tmp_path, 5, model, optimizer, scheduler)
    assert latest_checkpoint(tmp_path) == parent / "step_00000005"
    assert not stale.exists()  # the next save clears what an interrupted one left
    assert (parent / "notes.txt").exists()


def test_failure_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = make(seed=0)
    train_step(model, optimizer, scheduler)
    previous = save(tmp_path, 1, model, optimizer, scheduler)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, optimizer, scheduler)
    real_save = C._torch_save

    def fail_on_optimizer(obj, path):
        if path.name == "optimizer.pt":
            path.write_bytes(b"half a file")
            raise OSError("No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(C, "_torch_save", fail_on_optimizer)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path, 2, model, optimizer, scheduler, keep_last=1)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == previous
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    fresh, fresh_opt, fresh_sched = make(seed=2)
    assert load_checkpoint(
        previous, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, state=SINGLE
    ) == {"step": 1}
    assert_same_state(fresh.state_dict(), saved_weights)


def test_keep_last_prunes_older_checkpoints(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    for step in range(1, 6):
        save(tmp_path, step, model, optimizer, scheduler, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000004", "step_00000005"]
    save(tmp_path, 6, model, optimizer, scheduler, keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000006"]
    for step in (7, 8):
        save(tmp_path, step, model, optimizer, scheduler, keep_last=0)  # 0 keeps everything
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


def test_saving_a_step_again_replaces_it(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    save(tmp_path, 3, model, optimizer, scheduler)
    train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={"step": 3, "again": True}, state=SINGLE)  # fmt: skip
    fresh, fresh_opt, fresh_sched = make(seed=1)
    assert load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, state=SINGLE)[
        "again"
    ]
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003"]


def test_trainer_state_must_be_json(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler,
                        trainer_state={"t": torch.zeros(1)}, state=SINGLE)  # fmt: skip
    assert latest_checkpoint(tmp_path) is None


def corrupt_truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def corrupt_garbage_optimizer(path):
    (path / "optimizer.pt").write_bytes(b"\x00not a torch file")


def corrupt_rng(path):
    (path / "rng_rank0.pt").write_bytes(b"")


def corrupt_trainer_state(path):
    (path / "trainer_state.json").write_text("{not json")


def remove_meta(path):
    (path / "meta.json").unlink()


def remove_scheduler(path):
    (path / "scheduler.pt").unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (corrupt_truncate, r"model\.safetensors is corrupted \(.*\); resume from another checkpoint$"),
        (corrupt_garbage_optimizer, r"optimizer\.pt is corrupted"),
        (corrupt_rng, r"rng_rank0\.pt is corrupted"),
        (corrupt_trainer_state, r"trainer_state\.json is corrupted"),
        (remove_meta, r"is incomplete \(no valid meta\.json\)"),
        (remove_scheduler, r"is incomplete \(missing scheduler\.pt\)"),
    ],
)
def test_corrupted_checkpoint_is_one_line_config_error(tmp_path, damage, message):
    model, optimizer, scheduler = make(seed=0)
    path = save(tmp_path, 1, model, optimizer, scheduler)
    damage(path)
    fresh, fresh_opt, fresh_sched = make(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ConfigError, match=message) as info:
        load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, state=SINGLE)
    assert "\n" not in str(info.value)
    assert_same_state(fresh.state_dict(), before)  # nothing was half-loaded


def test_mismatches_are_config_errors(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    path = save(tmp_path, 1, model, optimizer, scheduler)
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_checkpoint(tmp_path / "nope", model=model, optimizer=None, scheduler=None, state=SINGLE)
    other = nn.Linear(5, 5)
    with pytest.raises(ConfigError, match=r"does not match the model \(missing: bias, weight; unexpected: "):
        load_checkpoint(path, model=other, optimizer=None, scheduler=None, state=SINGLE)
    wider = TiedNet(0)
    wider.body[0] = nn.Linear(5, 5, bias=True)
    wider.embed = nn.Embedding(9, 5)
    wider.head.weight = wider.embed.weight
    with pytest.raises(ConfigError, match=r"other shapes than the model: embed\.weight"):
        load_checkpoint(path, model=wider, optimizer=None, scheduler=None, state=SINGLE)
    two_ranks = single_process_state().__class__(
        rank=0, world_size=2, dp_size=2, sp_size=1, dp_rank=0, sp_rank=0, device=torch.device("cpu")
    )
    with pytest.raises(
        ConfigError, match=r"saved by 1 processes, this run has 2; resume with the same --nproc"
    ):
        load_checkpoint(path, model=model, optimizer=None, scheduler=None, state=two_ranks)


def test_model_only_checkpoint_cannot_resume_training(tmp_path):
    model, optimizer, scheduler = make(seed=0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=None, scheduler=None, trainer_state={},
                           state=SINGLE)  # fmt: skip
    assert load_checkpoint(path, model=make(1)[0], optimizer=None, scheduler=None, state=SINGLE) == {}
    with pytest.raises(ConfigError, match=r"has no optimizer\.pt / scheduler\.pt; it cannot resume training"):
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, state=SINGLE)


def _rng_part(run_dir: str, state) -> dict:
    """Each rank seeds differently, trains identically (same weights on every dp rank), saves, draws; then
    loads into fresh objects and draws again: the draws after loading must equal its own draws after saving."""
    rank = state.rank
    random.seed(100 + rank)
    np.random.seed(200 + rank)
    torch.manual_seed(300 + rank)
    model, optimizer, scheduler = make(seed=0)
    path = save_checkpoint(run_dir, 7, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={"step": 7, "position": 5}, state=state)  # fmt: skip
    after_save = draws()
    fresh, fresh_opt, fresh_sched = make(seed=rank + 10)
    restored = load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, state=state)
    same_weights = all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    return {"rank": rank, "after_save": after_save, "after_load": draws(), "restored": restored,
            "same_weights": same_weights, "files": sorted(p.name for p in path.iterdir())}  # fmt: skip


def _fsdp_part(run_dir: str, state) -> dict:
    """FSDP2 (fully_shard over both ranks, gloo): 2 steps, save, 2 more steps; a fresh sharded model loads the
    checkpoint and repeats the 2 steps: same losses and same full weights; the file holds the full weights."""
    from safetensors.torch import load_file
    from torch.distributed.fsdp import fully_shard

    def build(seed: int):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        fully_shard(model)
        optimizer = build_optimizer(model, OPTIM)
        return model, optimizer, build_scheduler(optimizer, OPTIM, TOTAL_STEPS)

    def step(model, optimizer, scheduler) -> float:
        loss = model(torch.randn(2, 4)).square().mean()  # different data per rank (per-rank RNG)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss.item()

    def full(model) -> dict:
        return {k: v.full_tensor() for k, v in model.state_dict().items()}

    torch.manual_seed(1000 + state.rank)
    model, optimizer, scheduler = build(0)
    for _ in range(2):
        step(model, optimizer, scheduler)
    saved = full(model)
    path = save_checkpoint(Path(run_dir) / "fsdp", 2, model=model, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={"step": 2}, state=state)  # fmt: skip
    losses = [step(model, optimizer, scheduler) for _ in range(2)]
    fresh, fresh_opt, fresh_sched = build(5)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, state=state)
    fresh_losses = [step(fresh, fresh_opt, fresh_sched) for _ in range(2)]
    on_disk = load_file(str(path / "model.safetensors"))
    return {
        "same_losses": losses == fresh_losses,
        "same_weights": all(torch.equal(full(fresh)[k], v) for k, v in full(model).items()),
        "file_is_full": all(torch.equal(on_disk[k], v) for k, v in saved.items())
        and on_disk.keys() == saved.keys(),
    }


def _two_rank_worker(run_dir: str) -> dict:
    state = init_parallel(1)
    return {"rng": _rng_part(run_dir, state), "fsdp": _fsdp_part(run_dir, state)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process gloo world (spawning costs most of the time) shared by the multi-rank tests."""
    run_dir = tmp_path_factory.mktemp("two_ranks")
    return run_dir, run_local(_two_rank_worker, 2, str(run_dir), timeout_s=240)


def test_two_ranks_save_and_restore_their_own_rng(two_ranks):
    run_dir, results = two_ranks
    rng = [r["rng"] for r in results]
    for r, result in enumerate(rng):
        assert result["rank"] == r
        assert result["after_load"] == result["after_save"]
        assert result["restored"] == {"step": 7, "position": 5}
        assert result["same_weights"]
    assert rng[0]["after_save"] != rng[1]["after_save"]  # per-rank streams, not one shared state
    assert rng[0]["files"] == [
        "meta.json", "model.safetensors", "optimizer.pt", "rng_rank0.pt", "rng_rank1.pt", "scheduler.pt",
        "trainer_state.json",
    ]  # fmt: skip
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, 7)


def test_fsdp2_sharded_model_resumes_exactly(two_ranks):
    _, results = two_ranks
    for result in results:
        assert result["fsdp"] == {"same_losses": True, "same_weights": True, "file_is_full": True}
