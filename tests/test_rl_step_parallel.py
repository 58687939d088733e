"""The GRPO step with two processes (gloo, CPU) gives the single-process update.

One 2-process world runs two layouts in turn: dp 2 (each rank 2 of the 4 prompts) and sp 2 (both ranks the
same 4 prompts: rollouts split over the ranks and gathered, sequence-parallel reference/update prefills
with ring attention). Each is compared with one process on the 4 prompts, with KL to a frozen reference
and PPO-ptx on 2 SFT rows (dp 2: one row per rank; sp 2: both rows, scored sequence-parallel):
the same rollouts (token for token: sampling seeds depend on the prompt's global index, and
prompt_batch_size = 1 makes each prompt its own engine call), the same synced gradient (max|g - g_ref| <=
1e-4 * max|g_ref| per tensor: the loss is normalized by the counts of the whole batch over dp, and sp shards
sum to the full gradient) and the same metrics (rel 1e-4).
"""

from __future__ import annotations

import pytest
import torch
from test_rl_step import _assert_grads_close, _assets, _examples, _ptx_term, _setup, _sft_rows

from longrl.parallel.launch import run_local
from longrl.rl.reference import Reference
from longrl.rl.step import grpo_step
from longrl.train.config import AlgoConfig

TIMEOUT_S = 300
PROMPTS = 4
PTX_ROWS = 2
METRICS = ("reward", "loss", "pg_loss", "kl", "entropy", "response_len", "groups_kept", "ptx_loss")


def _one_step(model_dir, videos, state):
    setup = _setup(model_dir, state=state, algo=AlgoConfig(kl_coef=0.1), reference=Reference.frozen_copy)
    per_rank = PROMPTS // state.dp_size
    rows = _sft_rows(videos, PTX_ROWS)
    # Uncut responses of different lengths: the dp ranks hold different token counts.
    setup.ptx = _ptx_term(rows, 0.5, PTX_ROWS // state.dp_size, state.dp_rank, state.dp_size, max_tokens=64)
    mine = _examples(videos, PROMPTS)[state.dp_rank * per_rank :][:per_rank]
    out = grpo_step(setup, mine, step=2)
    return setup.optimizer.grads[0], out.metrics, out.batch.input_ids


def _worker(model_dir, videos):
    from longrl.parallel.groups import init_parallel

    # The same world, two layouts: dp 2 x sp 1, then dp 1 x sp 2 (new groups).
    return {sp: _one_step(model_dir, videos, init_parallel(sp)) for sp in (1, 2)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from longrl.parallel.groups import single_process_state

    model_dir, videos = _assets(str(tmp_path_factory.mktemp("rl_step_parallel")))
    single = _one_step(model_dir, videos, single_process_state())
    return single, run_local(_worker, 2, model_dir, videos, timeout_s=TIMEOUT_S)


@pytest.mark.parametrize("sp", [1, 2], ids=["dp2", "sp2"])
def test_two_ranks_give_the_single_process_update(runs, sp):
    (ref_grads, ref_metrics, ref_ids), results = runs
    for rank, by_layout in enumerate(results):
        grads, metrics, ids = by_layout[sp]
        what = f"{'sp' if sp == 2 else 'dp'}=2 rank {rank}"
        rows = slice(None) if sp == 2 else slice(rank * len(ids), (rank + 1) * len(ids))
        width = ids.shape[1]
        assert torch.equal(ids, ref_ids[rows, :width]), f"{what}: different rollouts"
        _assert_grads_close(grads, ref_grads, what=what)
        for key in METRICS:
            assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-4, abs=1e-6), (what, key)
