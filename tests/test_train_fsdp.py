"""FSDP2 (longrl/train/fsdp.py) with dp = 2 on CPU (gloo): the same training as without it, 1/dp of the
weights per rank, and rollouts whose ranks run different numbers of decoder forwards.

One 2-process world runs every case, each with FSDP and without (dp = 2 both times; dp = 2 without FSDP is
itself compared with one process in test_sft_parallel.py / test_rl_step_parallel.py):
- SFT: 3 steps of `run_sft` (AdamW, grad clipping off; the FSDP run with gradient checkpointing, which
  recomputes each layer under FSDP's backward hooks), and 2 steps each of two variants: LoRA (frozen base
  weights and trainable adapters in one FSDP unit, merged into the gathered final folder) and a trainable
  vision tower (replicated, its gradients summed by `sync_gradients`, its parameters in the same AdamW as the
  shards): the same losses and final weights. Measured: equal to the bit (one backward per step, and FSDP's
  reduce-scatter SUM adds the same two numbers as the all-reduce did); asserted with rel 1e-6. Clipping is
  checked on its own: the DTensor gradient norm equals the norm of the gathered full gradients (rel 1e-6)
  and clipping scales it to max_norm. The GPU's mixed precision (bf16 gathers, fp32 gradient reduction)
  runs on the CPU too: its SFT losses stay within rel 1e-3 of float32 (measured 3e-5).
- GRPO: one `grpo_step` (KL to a reference loaded from the model folder, sharded too; dynamic sampling drops
  rank 0's flat group, so rank 0 has 4 micro-batches of 1 sequence and rank 1 has 8, and FSDP needs rank 0 to
  run 4 zero-weight padding forwards; SGD, clipping on): the same metrics (rel 1e-5) and updated weights
  (max|w - w_ref| <= 1e-5 * max|w_ref| per tensor; the per-micro-batch reduce-scatter sums in another order
  than the one all-reduce, a few fp32 ulps).
- Storage: each rank stores its half of every language-model tensor (dim-0 shards) and the whole vision
  tower (replicated by design).
- Rollouts: `collect_rollouts` with rank 0 sampling 2 new tokens and rank 1 sampling 9 (so 2 vs 9 decoder
  forwards): no hang (run_local's timeout), and the tokens and logprobs of the unsharded model.
- Engine weight sync (`policy_weights`, what a vLLM engine receives): full tensors with the LoRA update
  merged, equal to the unsharded policy's (rel 1e-6).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_rl_step import _assets, _examples, _reward

from longrl.errors import ConfigError
from longrl.parallel.groups import ParallelState, single_process_state
from longrl.parallel.launch import run_local
from longrl.train.fsdp import resolve_fsdp
from tests.train_fixtures import make_train_setup, sft_config

pytestmark = pytest.mark.slow  # one spawned 2-rank world runs every case: 15-50 s here, with load
TIMEOUT_S = 300
METRICS = ("reward", "loss", "pg_loss", "kl", "entropy", "response_len", "groups_kept", "grad_norm")


# ---- what each rank runs ----------------------------------------------------------------------------------


SFT_VARIANTS = {
    "full": {"run.steps": 3},
    "lora": {"run.steps": 2, "model.lora.rank": 4},
    "vision": {"run.steps": 2, "model.train_vision": True},
}


def _sft_run(paths: dict, out: Path, variant: str, fsdp: bool) -> None:
    from longrl.sft.trainer import run_sft

    extra = {"parallel.fsdp": fsdp, "optim.max_grad_norm": "none", **SFT_VARIANTS[variant]}
    if variant == "full" and fsdp:
        extra["model.gradient_checkpointing"] = True
    run_sft(sft_config(paths, out, extra))


def _storage_and_clip(paths: dict, out: Path) -> dict:
    """Per-rank storage of a sharded policy, and its gradient norm / clipping against the full gradients."""
    from longrl.sft.trainer import compute_gradients
    from longrl.train.fsdp import full_tensor, is_dtensor
    from longrl.train.optim import clip_gradients
    from longrl.train.setup import close_run, setup_run

    ctx = setup_run(sft_config(paths, out, {"parallel.fsdp": True}), "sft")
    try:
        vision = {id(p) for p in ctx.adapter.vision_tower.parameters()}
        # (name, sharded, in the vision tower, full shape, elements stored here when sharded)
        rows = [
            (n, is_dtensor(p), id(p) in vision, tuple(p.shape), p.to_local().numel() if is_dtensor(p) else 0)
            for n, p in ctx.model.named_parameters()
        ]
        compute_gradients(ctx)
        params = ctx.trainable_parameters()
        norm = clip_gradients(params, None)
        full_norm = float(torch.linalg.vector_norm(torch.stack([full_tensor(p.grad).norm() for p in params])))
        clip_gradients(params, 1.0)
        clipped = float(torch.linalg.vector_norm(torch.stack([full_tensor(p.grad).norm() for p in params])))
        return {"rows": rows, "norm": norm, "full_norm": full_norm, "clipped": clipped}
    finally:
        close_run(ctx)


def _engine_weights(paths: dict, out: Path, fsdp: bool) -> dict[str, torch.Tensor]:
    """What `sync_engine` sends a vLLM engine (`policy_weights`) for a LoRA policy whose adapters are set to
    a known non-zero update (lora_B = 0.01 everywhere; lora_A as initialized, the same seed on every rank)."""
    from longrl.rl.trainer import policy_weights
    from longrl.train.setup import close_run, setup_run

    ctx = setup_run(sft_config(paths, out, {"parallel.fsdp": fsdp, "model.lora.rank": 4}), "sft")
    try:
        with torch.no_grad():
            for name, p in ctx.model.named_parameters():
                if name.endswith("lora_B"):
                    p.fill_(0.01)  # a DTensor fills its own shard
        return {name: tensor.clone() for name, tensor in policy_weights(ctx.model)}
    finally:
        close_run(ctx)


def _grpo(model_dir: Path, videos: list[Path], state, fsdp: bool) -> tuple[dict, dict]:
    import longrl.models as M
    from longrl.models.loading import load_model
    from longrl.rl.reference import Reference
    from longrl.rl.step import GRPOSetup, grpo_step
    from longrl.rollout.hf import HFEngine
    from longrl.rollout.prompts import VideoSource
    from longrl.train.config import AlgoConfig, RolloutConfig
    from longrl.train.fsdp import full_tensor, shard_model
    from longrl.video.sampling import SamplingConfig

    loaded = load_model(model_dir)
    adapter, tok = loaded.adapter, loaded.tokenizer
    adapter.model.requires_grad_(True)
    adapter.set_vision_trainable(False)
    if fsdp:
        shard_model(adapter, state)
    params = [p for p in adapter.model.parameters() if p.requires_grad]
    store = M.EmbeddingStore.for_adapter(adapter)
    setup = GRPOSetup(
        adapter, tok, HFEngine(adapter, tok), torch.optim.SGD(params, lr=0.05),
        VideoSource(SamplingConfig(num_frames=2), loaded.video_config, store=store, state=state), state,
        RolloutConfig(n=4, max_new_tokens=6, temperature=1.0, prompt_batch_size=1),
        AlgoConfig(kl_coef=0.1, dynamic_sampling=True, max_refill_rounds=0, micro_batch_size=1),
        _reward("constant_for_q0"),
        reference=Reference.load(model_dir, dtype=torch.float32, device="cpu", shard=state if fsdp else None),
        seed=7, max_grad_norm=1.0, params=params,
    )  # fmt: skip
    # Prompt 0 ("flat") has one reward for all its responses: dynamic sampling drops it, on rank 0 only.
    mine = _examples(videos, 4, flat=(0,))[state.dp_rank * 2 :][:2]
    out = grpo_step(setup, mine, step=1)
    weights = {name: full_tensor(p.detach()).clone() for name, p in adapter.model.named_parameters()}
    return out.metrics, weights


def _rollouts(model_dir: Path, videos: list[Path], state, fsdp: bool) -> list[tuple[list[int], list[float]]]:
    import longrl.models as M
    from longrl.models.loading import load_model
    from longrl.rl.step import GRPOSetup, collect_rollouts
    from longrl.rollout.hf import HFEngine
    from longrl.rollout.prompts import VideoSource
    from longrl.train.config import AlgoConfig, RolloutConfig
    from longrl.train.fsdp import shard_model
    from longrl.train.metrics import StepTimer
    from longrl.video.sampling import SamplingConfig

    loaded = load_model(model_dir)
    adapter, tok = loaded.adapter, loaded.tokenizer
    adapter.set_vision_trainable(False)
    if fsdp:
        shard_model(adapter, state)
    new_tokens = 2 if state.dp_rank == 0 else 9  # 2 vs 9 decoder forwards after the prefill
    store = M.EmbeddingStore.for_adapter(adapter)
    setup = GRPOSetup(
        adapter, tok, HFEngine(adapter, tok, eos_ids=[]), None,
        VideoSource(SamplingConfig(num_frames=2), loaded.video_config, store=store, state=state), state,
        RolloutConfig(n=2, max_new_tokens=new_tokens, prompt_batch_size=1), AlgoConfig(), _reward("letter_share"),
        seed=3,
    )  # fmt: skip
    mine = _examples(videos, 4)[state.dp_rank * 2 :][:2]
    rollouts = collect_rollouts(setup, mine, 1, None, StepTimer())
    return [(r.token_ids.tolist(), r.logprobs.tolist()) for g in rollouts.groups for r in g.results]


def _worker(paths: dict, model_dir: Path, videos: list[Path], root: str) -> dict:
    import torch.distributed as dist

    from longrl.parallel.groups import init_parallel

    dist.init_process_group("gloo")  # our own world: setup_run builds its groups in it and leaves it open
    for variant in SFT_VARIANTS:
        for fsdp in (False, True):
            _sft_run(paths, Path(root) / f"sft_{variant}_fsdp_{fsdp}", variant, fsdp)
    import longrl.train.fsdp as fsdp_module

    gpu_policy = fsdp_module.mixed_precision
    fsdp_module.mixed_precision = lambda device, dtype: gpu_policy(torch.device("cuda"), dtype)
    try:
        _sft_run(paths, Path(root) / "sft_bf16", "full", True)
    finally:
        fsdp_module.mixed_precision = gpu_policy
    state = init_parallel(1)
    return {
        "storage": _storage_and_clip(paths, Path(root) / "storage"),
        "engine_weights": {
            fsdp: _engine_weights(paths, Path(root) / f"sync_{fsdp}", fsdp) for fsdp in (False, True)
        },
        "grpo": {fsdp: _grpo(model_dir, videos, state, fsdp) for fsdp in (False, True)},
        "rollouts": {fsdp: _rollouts(model_dir, videos, state, fsdp) for fsdp in (False, True)},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    paths = make_train_setup(root / "setup")
    (root / "rl").mkdir()
    model_dir, videos = _assets(str(root / "rl"))
    results = run_local(_worker, 2, paths, model_dir, videos, str(root), timeout_s=TIMEOUT_S)
    return root, results


# ---- checks ------------------------------------------------------------------------------------------------


def _max_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)


def _metric_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in rows]


@pytest.mark.parametrize("variant", list(SFT_VARIANTS))
def test_sft_with_fsdp_equals_sft_without(runs, variant):
    root, _ = runs
    plain, sharded = root / f"sft_{variant}_fsdp_False", root / f"sft_{variant}_fsdp_True"
    a, b = _metric_rows(plain), _metric_rows(sharded)
    steps = SFT_VARIANTS[variant]["run.steps"]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "grad_norm", "tokens", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6), key
    weights_a = load_file(str(plain / "final" / "model.safetensors"))
    weights_b = load_file(str(sharded / "final" / "model.safetensors"))
    assert _max_relative(weights_b, weights_a) <= 1e-6
    # The gathered export is the same HF folder: config, generation config, tokenizer, preprocessors.
    files = sorted(p.name for p in (plain / "final").iterdir())
    assert files == sorted(p.name for p in (sharded / "final").iterdir())
    for name in files:
        if name != "model.safetensors":
            assert (plain / "final" / name).read_bytes() == (sharded / "final" / name).read_bytes(), name
    initial = load_file(str(Path(root) / "setup" / "model" / "model.safetensors"))
    assert any(not weights_b[k].equal(initial[k]) for k in initial)  # it trained
    summaries = [json.loads((run / "summary.json").read_text()) for run in (plain, sharded)]
    assert [s["fsdp"] for s in summaries] == [False, True]


def test_bf16_gathers_with_fp32_reduction_train_close_to_float32(runs):
    root, _ = runs
    a, b = _metric_rows(root / "sft_full_fsdp_False"), _metric_rows(root / "sft_bf16")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] != ra["loss"]  # the gathers did run in bfloat16
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-3)


def test_each_rank_stores_half_of_the_language_model(runs):
    _, results = runs
    for rank, result in enumerate(results):
        rows = result["storage"]["rows"]
        # Sharded: exactly the language model; replicated: exactly the vision tower.
        assert all(sharded != vision for _, sharded, vision, _, _ in rows), rank
        full = sum(math.prod(shape) for _, sharded, _, shape, _ in rows if sharded)
        local = sum(n for _, sharded, _, _, n in rows if sharded)
        # dim 0 split in 2 (rank 0 takes the rounded-up half of an odd dim 0)
        expected = sum(
            (math.ceil(s[0] / 2) if rank == 0 else s[0] // 2) * math.prod(s[1:])
            for _, sharded, _, s, _ in rows
            if sharded
        )
        assert local == expected and abs(local / full - 0.5) < 0.01, (rank, local, full)
    total = sum(sum(n for _, sharded, _, _, n in r["storage"]["rows"] if sharded) for r in results)
    assert total == sum(math.prod(s) for _, sharded, _, s, _ in results[0]["storage"]["rows"] if sharded)


def test_clipping_uses_the_norm_of_the_full_gradients(runs):
    _, results = runs
    for result in results:
        storage = result["storage"]
        assert storage["norm"] == pytest.approx(storage["full_norm"], rel=1e-6)
        assert storage["norm"] > 1.0  # so clipping to 1.0 does something
        assert storage["clipped"] == pytest.approx(1.0, rel=1e-5)


def test_the_engine_weight_sync_sends_full_merged_tensors(runs):
    _, results = runs
    for result in results:
        plain, sharded = result["engine_weights"][False], result["engine_weights"][True]
        assert list(sharded) == list(plain) and not any("lora_" in name for name in plain)
        assert all(type(t) is torch.Tensor for t in sharded.values())  # full tensors, not DTensor shards
        assert _max_relative(sharded, plain) <= 1e-6
    assert _max_relative(results[1]["engine_weights"][True], results[0]["engine_weights"][True]) == 0.0


def test_grpo_step_with_fsdp_equals_the_step_without(runs):
    _, results = runs
    for rank, result in enumerate(results):
        (metrics_a, weights_a), (metrics_b, weights_b) = result["grpo"][False], result["grpo"][True]
        assert metrics_a["groups_kept"] == 3  # rank 0's flat group was dropped: unequal micro-batches
        for key in METRICS:
            assert metrics_b[key] == pytest.approx(metrics_a[key], rel=1e-5, abs=1e-7), (rank, key)
        assert _max_relative(weights_b, weights_a) <= 1e-5, rank
    assert results[0]["grpo"][True][1].keys() == results[1]["grpo"][True][1].keys()
    assert _max_relative(results[0]["grpo"][True][1], results[1]["grpo"][True][1]) == 0.0  # one model


def test_rollouts_with_different_lengths_per_rank_match_the_unsharded_model(runs):
    _, results = runs
    for rank, result in enumerate(results):
        plain, sharded = result["rollouts"][False], result["rollouts"][True]
        assert [len(ids) for ids, _ in sharded] == [2 if rank == 0 else 9] * 4
        assert [ids for ids, _ in sharded] == [ids for ids, _ in plain]
        for (_, lp_b), (_, lp_a) in zip(sharded, plain, strict=True):
            assert lp_b == pytest.approx(lp_a, abs=1e-5)


def test_auto_shards_with_cuda_and_several_dp_ranks_and_true_needs_processes():
    dp2 = ParallelState(
        rank=0, world_size=2, dp_size=2, sp_size=1, dp_rank=0, sp_rank=0, device=torch.device("cpu")
    )
    sp2 = ParallelState(
        rank=0, world_size=2, dp_size=1, sp_size=2, dp_rank=0, sp_rank=0, device=torch.device("cpu")
    )
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_fsdp("auto", dp2, cuda) and not resolve_fsdp("auto", dp2, cpu)
    assert not resolve_fsdp("auto", sp2, cuda)  # one dp rank: nothing to shard over
    assert resolve_fsdp(True, dp2, cpu) and not resolve_fsdp(False, dp2, cuda)
    with pytest.raises(ConfigError, match="parallel.fsdp true needs several processes"):
        resolve_fsdp(True, single_process_state(), cpu)
