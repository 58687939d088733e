"""SFT across processes (2 gloo ranks on CPU): MR-SP with sp=2 and data parallelism with dp=2 give the same
gradients, and so the same update, as one process on the same 4 sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longrl.parallel.launch import run_local
from longrl.sft.trainer import compute_gradients
from longrl.train.setup import close_run, setup_run
from tests.train_fixtures import make_train_setup, sft_config


def _gradients(paths: dict, out: Path, extra: dict) -> tuple[int, dict[str, torch.Tensor]]:
    ctx = setup_run(sft_config(paths, out, extra), "sft")
    try:
        stats = compute_gradients(ctx)
        grads = {n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
        return stats.tokens, grads
    finally:
        close_run(ctx)


def _two_ranks(paths: dict, root: str) -> list:
    """Each rank: sp=2 (both ranks share the 4 sequences) then dp=2 (2 sequences each), in one world."""
    import torch.distributed as dist

    dist.init_process_group("gloo")  # our own world: setup_run builds its groups in it and leaves it open
    sp = _gradients(paths, Path(root) / "sp2", {"batch_size": 4, "parallel.sp": 2})
    dp = _gradients(paths, Path(root) / "dp2", {"batch_size": 2})
    return [sp, dp]


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in a)


@pytest.mark.slow  # two spawned ranks each import torch + transformers and load the model: ~40 s here
def test_sp2_and_dp2_match_one_process(tmp_path):
    paths = make_train_setup(tmp_path / "setup")
    tokens, reference = _gradients(paths, tmp_path / "single", {"batch_size": 4})
    rank0, rank1 = run_local(_two_ranks, 2, paths, str(tmp_path), timeout_s=400)
    for (tokens0, grads0), (tokens1, grads1) in zip(rank0, rank1, strict=True):
        assert tokens0 == tokens1 == tokens  # the global count covers the same 4 sequences
        # After sync_gradients every rank holds the same (summed, normalized) gradient.
        assert all(torch.equal(grads0[k], grads1[k]) for k in grads0)
    (_, sp_grads), (_, dp_grads) = rank0
    # Ring attention over 2 shards (LSE merge) and a 2-way gradient sum reorder fp32 sums: a few ulps.
    assert _relative_difference(reference, sp_grads) <= 2e-6
    # dp: the two ranks' shards are the first 4 entries of the epoch permutation, as the single run's batch.
    assert _relative_difference(reference, dp_grads) <= 2e-6
