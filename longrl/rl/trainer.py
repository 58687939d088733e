"""`longrl train rl`: the GRPO loop around `longrl.rl.step.grpo_step`.

    summary = run_rl(cfg)      # setup_run -> steps -> final HF folder + summary.json

Per step: this dp rank's next `batch_size` prompts (`TrainData`), one `grpo_step` (vision encode once and
cached, rollouts, rewards, advantages, old/ref logprobs, PPO updates), the LR schedule's step, the new weights
to the rollout engine (`update_weights`; skipped for the hf engine, which samples from the trainer's own
model), a metrics row, and a checkpoint every `run.save_every` steps. A resumed run (`--resume auto`)
continues exactly: the checkpoint holds the weights, optimizer, schedule, RNG states and data positions, and
every sampling seed is a function of (run seed, step, prompt), not of anything that happened before.

The reference of the KL term (only when algo.kl_coef > 0): the base weights under `adapters_disabled` with
LoRA; otherwise the initial model read back from `model.path` (so a resumed run gets the initial policy,
not the checkpoint's), FSDP-sharded like the policy when parallel.fsdp is on. With FSDP the engine's weight
sync gathers full tensors one by one (`policy_weights`). The vision tower stays frozen in RL (its embeddings
are cached across rollouts and prefills): `model.train_vision` is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from longrl.errors import ConfigError
from longrl.rl.ptx import PtxTerm
from longrl.rl.reference import Reference
from longrl.rl.step import GRPOSetup, grpo_step
from longrl.rollout import RolloutEngine, engine_class
from longrl.train.fsdp import full_tensor, is_dtensor, mesh_of
from longrl.train.lora import lora_layers
from longrl.train.metrics import StepTimer
from longrl.train.setup import UNREADABLE_VIDEOS, TrainContext, close_run, finish_run, run_steps, setup_run

if TYPE_CHECKING:
    from torch import nn

    from longrl.train.config import RLConfig


def check_rl_config(cfg: RLConfig) -> None:
    """RL-only config rules (one ConfigError line each)."""
    if cfg.model.train_vision:
        raise ConfigError(
            "train rl keeps the vision tower frozen (MR-SP caches its video embeddings across rollouts and "
            "prefills); drop --train-vision / model.train_vision"
        )


def policy_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy as a plain HF model: every parameter and buffer, with each LoRA layer's
    update folded into its base weight (names as in the original model, no lora_A / lora_B).

    An FSDP-sharded policy yields full tensors, gathered one at a time (each a collective over its mesh:
    every rank must consume the whole iterator, in step)."""
    merged = {f"{name}.weight": layer for name, layer in lora_layers(model)}
    skipped = {f"{name}.{part}" for name, _ in lora_layers(model) for part in ("lora_A", "lora_B")}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in skipped:
            continue
        layer = merged.get(name)
        if layer is not None and is_dtensor(layer.weight):
            with torch.no_grad():
                weight = full_tensor(layer.weight)
                delta = (full_tensor(layer.lora_B).float() @ full_tensor(layer.lora_A).float()) * layer.scale
                tensor = (weight.float() + delta).to(weight.dtype)
        elif layer is not None:
            with torch.no_grad():
                tensor = (layer.weight.float() + layer.delta_weight()).to(layer.weight.dtype)
        else:
            tensor = full_tensor(tensor)
        yield name, tensor.detach()


def sync_engine(engine: RolloutEngine, ctx: TrainContext) -> None:
    """Hand the updated policy to the engine (woken first). An engine that samples from the trainer's own
    adapter (hf) already sees every update: sending it merged LoRA weights would overwrite its base weights."""
    if getattr(engine, "adapter", None) is ctx.adapter:
        return
    engine.wake()
    engine.update_weights(policy_weights(ctx.model))


def build_reference(ctx: TrainContext) -> Reference | None:
    """The KL reference (see the module docstring), or None when algo.kl_coef is 0."""
    cfg: RLConfig = ctx.cfg
    if not cfg.algo.kl_coef:
        return None
    if ctx.lora_modules:
        return Reference.lora_base(ctx.adapter)
    if not ctx.fsdp:
        return Reference.load(cfg.model.path, dtype=ctx.adapter.dtype, device=ctx.device)
    # Sharded like the policy, on its mesh (forward only).
    return Reference.load(
        cfg.model.path, dtype=ctx.adapter.dtype, device=ctx.device, shard=ctx.state, mesh=mesh_of(ctx.model)
    )


def build_grpo_setup(ctx: TrainContext) -> GRPOSetup:
    """The GRPO step's inputs from a started run: the engine, the reference and the run's objects."""
    cfg: RLConfig = ctx.cfg
    if cfg.rollout.engine == "hf":
        engine = engine_class("hf")(ctx.adapter, ctx.tokenizer)
    else:
        # An engine with its own copy of the weights starts from the base folder (a LoRA-wrapped policy has
        # adapter keys it cannot load), then gets the current policy: LoRA merged, or a resumed run's weights.
        from longrl.rollout.vllm import rollout_max_model_len

        r = cfg.rollout  # it shares the device with the trainer: its memory share and longest sequence
        max_model_len = r.max_model_len or rollout_max_model_len(
            ctx.adapter, ctx.tokenizer, ctx.data.examples, ctx.source, r.max_new_tokens
        )
        engine = engine_class(r.engine)(
            ctx.adapter,
            ctx.tokenizer,
            model_dir=cfg.model.path,
            max_model_len=max_model_len,
            gpu_memory_utilization=r.gpu_memory_utilization,
            enforce_eager=r.enforce_eager,
            # On GPU the policy keeps float32 masters under bf16 autocast: the engine samples in bf16 (half
            # the memory of its share, and vLLM's fast attention), the trainer's logprobs correct via TIS.
            dtype=torch.bfloat16 if ctx.device.type == "cuda" else None,
        )
        sync_engine(engine, ctx)

    ptx = None
    if ctx.ptx_data is not None:
        ptx = PtxTerm(
            data=ctx.ptx_data,
            coef=cfg.algo.ptx_coef,
            batch_size=cfg.algo.ptx_batch_size or cfg.batch_size,
            max_response_tokens=cfg.rollout.max_new_tokens,
            on_failed=ctx.skip_unreadable(ctx.ptx_data, cfg.data.ptx, label="ptx row"),
        )
    return GRPOSetup(
        adapter=ctx.adapter,
        tokenizer=ctx.tokenizer,
        engine=engine,
        optimizer=ctx.optimizer,
        source=ctx.source,
        state=ctx.state,
        rollout=cfg.rollout,
        algo=cfg.algo,
        reward=cfg.reward,
        reference=build_reference(ctx),
        seed=cfg.run.seed,
        sp_attn=ctx.sp_attn,
        max_grad_norm=cfg.optim.max_grad_norm,
        autocast=ctx.autocast,
        params=ctx.trainable_parameters(),
        on_failed=ctx.skip_unreadable(ctx.data, cfg.data.train),
        ptx=ptx,
    )


def rl_step(ctx: TrainContext, setup: GRPOSetup, step: int) -> dict[str, float]:
    """One GRPO step (1-based `step`), the schedule's step and the engine's weight sync; returns the metrics."""
    cfg: RLConfig = ctx.cfg
    prompts = ctx.data.next_batch(cfg.batch_size)
    out = grpo_step(setup, prompts, step, draw_prompts=ctx.data.next_batch)
    ctx.scheduler.step()
    timer = StepTimer(sync_cuda=ctx.device.type == "cuda")
    with timer.section("sync_weights"):
        sync_engine(setup.engine, ctx)
    metrics = dict(out.metrics)
    metrics.update(timer.totals())
    # The run folder's contract (ARCHITECTURE.md): every metrics row has `loss` and `reward_mean`.
    metrics["reward_mean"] = metrics.get("reward", 0.0)
    metrics["epoch"] = float(ctx.data.epoch)
    return metrics


def train_rl(ctx: TrainContext) -> dict[str, Any]:
    """The loop from ctx.start_step to cfg.run.steps, checkpoints included; returns the run summary."""
    setup = build_grpo_setup(ctx)
    try:
        last = run_steps(ctx, lambda step: rl_step(ctx, setup, step), "rl")
    finally:
        close = getattr(setup.engine, "close", None)  # vllm: shut the engine down, remove its weights folder
        if close is not None:
            close()
    summary = finish_run(ctx, last)
    if ctx.is_main:
        _print_summary(ctx, summary)
    return summary


def _print_summary(ctx: TrainContext, summary: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    console.print(ctx.load_report.summary(), markup=False)
    if ctx.ptx_report is not None:
        console.print(f"PPO-ptx rows: {ctx.ptx_report.summary()}", markup=False)
    final = summary["final_metrics"]
    console.print(
        f"unreadable videos skipped: {summary['counts'].get(UNREADABLE_VIDEOS, 0)}; "
        f"final reward {final.get('reward', float('nan')):.3f}",
        markup=False,
    )
    for problem in summary["problems"][:5]:
        console.print(f"  {problem}", markup=False)
    console.print(f"final model: {summary['final_model']}", markup=False)


def run_rl(cfg: RLConfig) -> dict[str, Any]:
    """Run GRPO from a validated config: setup, train, final HF folder + summary.json. Returns the summary."""
    check_rl_config(cfg)
    ctx = setup_run(cfg, kind="rl")
    try:
        return train_rl(ctx)
    finally:
        close_run(ctx)
