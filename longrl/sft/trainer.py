"""CoT-SFT: response-only cross-entropy on `<think>{reasoning}</think><answer>{answer}</answer>`.

One optimizer step = `grad_accum` micro batches of `batch_size` sequences on each dp rank. The loss is the
mean of -log p over every response token of the step, across micro batches and dp ranks:

    loss = sum over all scored tokens of -log p(token)  /  (number of scored tokens in the whole step)

so accumulation and data parallelism give the same update as one big batch. It is computed as: backward of
each micro batch's token SUM, gradients summed over sp and dp ranks (`sync_gradients`), then divided by the
global token count (known only once every micro batch is built, which is why the division comes last).
With FSDP (`longrl.train.fsdp`) the sum over dp and sp happens in FSDP's own gradient reduction, which
`sync_gradients` then leaves alone; every dp rank runs the same grad_accum forwards, as FSDP needs.

Video embeddings come through `longrl.rollout.prompts.encode_videos` (sharded over the sp group and cached
while the tower is frozen; with `model.train_vision` every micro batch re-encodes with gradients). A row
whose video cannot be decoded is skipped, counted, never drawn again, and its place in the batch is taken
by the next row (`--on-bad-row fail`: the run stops naming it). The decoder runs sequence-parallel through
`longrl.parallel.sp_prefill.sp_token_logprobs` (sp=1 is the plain case).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from longrl.parallel.sp_attention import sp_attention
from longrl.parallel.sp_prefill import sp_token_logprobs, sync_gradients
from longrl.rollout.prompts import encode_videos
from longrl.sft.batch import build_sft_batch
from longrl.train.data import next_encoded
from longrl.train.fsdp import forward_region
from longrl.train.metrics import StepTimer
from longrl.train.optim import clip_gradients
from longrl.train.setup import UNREADABLE_VIDEOS, TrainContext, close_run, finish_run, run_steps, setup_run

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.embedding_store import VideoEmbedding
    from longrl.train.config import SFTConfig


@dataclass
class GradStats:
    """What one step's gradient computation saw, summed over dp ranks (equal on every rank).

    loss: mean -log p per scored token; tokens: scored tokens; sequences: sequences; truncated: responses
    cut to max_response_tokens; max_len: longest sequence of the step (prompt + video + response).
    """

    loss: float
    tokens: int
    sequences: int
    truncated: int
    max_len: int


def next_micro_batch(ctx: TrainContext, n: int) -> tuple[list[Example], list[VideoEmbedding]]:
    """This rank's next `n` examples whose videos decode, with their embeddings (a collective over sp).

    A row whose video fails is excluded from the data for good and counted (or raises DataError with
    `--on-bad-row fail`); the batch is refilled from the next rows.
    """

    def encode(paths):
        with torch.set_grad_enabled(ctx.cfg.model.train_vision), ctx.autocast():
            return encode_videos(ctx.adapter, paths, ctx.source)

    return next_encoded(ctx.data, n, encode, ctx.skip_unreadable(ctx.data, ctx.cfg.data.train))


def _sum_over_dp(values: list[float], ctx: TrainContext, op=None) -> list[float]:
    """Sum (or `op`) of per-replica values over the dp ranks; the sp ranks of a replica hold equal values."""
    if not ctx.state.distributed or ctx.state.dp_group is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.state.device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=ctx.state.dp_group)
    return t.tolist()


def _score(ctx: TrainContext, examples: list[Example], videos: list[VideoEmbedding]):
    """(the SFT batch of `examples`, its logprobs [B, L] float32 with grad), sequence-parallel."""
    batch = build_sft_batch(
        ctx.adapter, ctx.tokenizer, examples, videos, max_response_tokens=ctx.cfg.max_response_tokens
    )
    return batch, sp_token_logprobs(ctx.adapter, batch.inputs, batch.targets, ctx.state, attn=ctx.sp_attn)


def compute_gradients(ctx: TrainContext, timer: StepTimer | None = None) -> GradStats:
    """Fill `.grad` of the trainable parameters with the gradient of this step's loss (see the module
    docstring), identical on every rank. Draws grad_accum micro batches from the data."""
    cfg: SFTConfig = ctx.cfg
    timer = timer or StepTimer()
    for p in ctx.trainable_parameters():
        p.grad = None
    loss_sum = 0.0
    tokens = sequences = truncated = max_len = 0
    for _ in range(cfg.grad_accum):
        with timer.section("vision"):
            examples, videos = next_micro_batch(ctx, cfg.batch_size)
        with timer.section("forward_backward"):
            # Backward runs inside the SP block too: activation checkpointing recomputes the decoder layers
            # (and so their SP attention) during backward.
            with sp_attention(ctx.adapter, ctx.state.sp_group, ctx.sp_attn):
                with ctx.autocast():
                    # A region: with FSDP the embeddings and the LM head are gathered for it (see fsdp.py).
                    batch, logp = forward_region(ctx.model, partial(_score, ctx, examples, videos))
                # logp is 0 where nothing is scored, so the sum runs over response tokens only.
                token_sum = -logp.float().sum()
                token_sum.backward()
        loss_sum += float(token_sum.detach())
        tokens += batch.num_tokens
        sequences += len(examples)
        truncated += batch.truncated
        max_len = max(max_len, int(batch.inputs.attention_mask.shape[1]))
        ctx.counts["truncated_responses"] += batch.truncated
    with timer.section("sync"):
        sync_gradients(ctx.trainable_parameters(), ctx.state, dp_reduce="sum")
        loss_sum, g_tokens, sequences, truncated = _sum_over_dp([loss_sum, tokens, sequences, truncated], ctx)
        (max_len,) = _sum_over_dp([max_len], ctx, op=dist.ReduceOp.MAX if ctx.state.distributed else None)
        scale = 1.0 / g_tokens
        for p in ctx.trainable_parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
    return GradStats(loss_sum / g_tokens, int(g_tokens), int(sequences), int(truncated), int(max_len))


def optimizer_step(ctx: TrainContext) -> tuple[float, float, bool]:
    """Clip, step the optimizer and the schedule. Returns (grad norm before clipping, lr used, applied).

    A step whose gradient norm is not finite is skipped (counted as "skipped_steps"); the schedule still
    advances so the lr follows the step count.
    """
    lr = float(ctx.optimizer.param_groups[0]["lr"])
    norm = clip_gradients(ctx.trainable_parameters(), ctx.cfg.optim.max_grad_norm)
    applied = math.isfinite(norm)
    if applied:
        ctx.optimizer.step()
    else:
        ctx.counts["skipped_steps"] += 1
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step()
    return norm, lr, applied


def sft_step(ctx: TrainContext) -> dict[str, float]:
    """One optimizer step; returns its metrics."""
    timer = StepTimer(sync_cuda=ctx.device.type == "cuda")
    start = time.perf_counter()
    stats = compute_gradients(ctx, timer)
    with timer.section("update"):
        grad_norm, lr, _ = optimizer_step(ctx)
    metrics: dict[str, float] = {
        "loss": stats.loss,
        "grad_norm": grad_norm,
        "lr": lr,
        "tokens": stats.tokens,
        "sequences": stats.sequences,
        "seq_len": stats.max_len,
        "epoch": ctx.data.epoch,
        "time/step": time.perf_counter() - start,
        **timer.totals(),
    }
    if ctx.store is not None:
        counts = ctx.store.counts
        looked_up = counts["hits"] + counts["disk_hits"] + counts["misses"]
        metrics["cache_hit_rate"] = (counts["hits"] + counts["disk_hits"]) / looked_up if looked_up else 0.0
    return metrics


def train_sft(ctx: TrainContext) -> dict[str, Any]:
    """The training loop from ctx.start_step to cfg.run.steps, checkpoints included; returns the summary."""
    summary = finish_run(ctx, run_steps(ctx, lambda step: sft_step(ctx), "sft"))
    if ctx.is_main:
        _print_summary(ctx, summary)
    return summary


def _print_summary(ctx: TrainContext, summary: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    console.print(ctx.load_report.summary(), markup=False)
    counts = summary["counts"]
    console.print(
        f"unreadable videos skipped: {counts.get(UNREADABLE_VIDEOS, 0)}; "
        f"responses truncated: {counts.get('truncated_responses', 0)}; "
        f"skipped steps (non-finite gradients): {counts.get('skipped_steps', 0)}",
        markup=False,
        soft_wrap=True,
    )
    for problem in summary["problems"][:5]:
        console.print(f"  {problem}", markup=False)
    console.print(f"final model: {summary['final_model']}", markup=False)


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Run CoT-SFT from a validated config: setup, train, final HF folder + summary.json. Returns the summary."""
    ctx = setup_run(cfg, kind="sft")
    try:
        return train_sft(ctx)
    finally:
        close_run(ctx)
