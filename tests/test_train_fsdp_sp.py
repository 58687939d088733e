"""FSDP2 with sequence parallelism: dp = 2 x sp = 2 (4 gloo ranks on CPU) gives the gradient of the same
layout without FSDP.

HSDP: each tensor is sharded over the 2 dp ranks and replicated over the 2 sp ranks of a replica; the
gradient is reduce-scattered over dp then all-reduced over sp, both as plain sums, which must equal
`sync_gradients`' world all-reduce SUM (the loss is normalized by the global token count). One SFT
`compute_gradients` per layout, in one world: the full (gathered) gradients agree to a few fp32 ulps
(max|g - g_ref| <= 1e-6 * max|g_ref| per tensor; the two-level sum adds the 4 ranks' parts in another order
than the world all-reduce), on every rank, and the token counts are equal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longrl.parallel.launch import run_local
from tests.train_fixtures import make_train_setup, sft_config


def _gradients(paths: dict, out: Path, fsdp: bool) -> tuple[int, dict[str, torch.Tensor]]:
    from longrl.sft.trainer import compute_gradients
    from longrl.train.fsdp import full_tensor
    from longrl.train.setup import close_run, setup_run

    ctx = setup_run(sft_config(paths, out, {"batch_size": 2, "parallel.sp": 2, "parallel.fsdp": fsdp}), "sft")
    try:
        assert ctx.fsdp == fsdp
        stats = compute_gradients(ctx)
        grads = {
            n: full_tensor(p.grad).clone() for n, p in ctx.model.named_parameters() if p.grad is not None
        }
        return stats.tokens, grads
    finally:
        close_run(ctx)


def _worker(paths: dict, root: str) -> dict:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    return {fsdp: _gradients(paths, Path(root) / f"fsdp_{fsdp}", fsdp) for fsdp in (False, True)}


@pytest.mark.slow  # four spawned ranks on a shared 2-core machine
def test_dp2_sp2_with_fsdp_gives_the_gradient_without(tmp_path):
    paths = make_train_setup(tmp_path / "setup")
    results = run_local(_worker, 4, paths, str(tmp_path), timeout_s=400, threads_per_rank=1)
    for rank, by_layout in enumerate(results):
        (tokens_a, plain), (tokens_b, sharded) = by_layout[False], by_layout[True]
        assert tokens_a == tokens_b > 0
        assert plain.keys() == sharded.keys() and plain
        worst = max(float((sharded[k] - plain[k]).abs().max() / plain[k].abs().max()) for k in plain)
        assert worst <= 1e-6, (rank, worst)
    for by_layout in results[1:]:  # every rank holds the same full gradient
        assert all(torch.equal(by_layout[True][1][k], results[0][True][1][k]) for k in results[0][True][1])
