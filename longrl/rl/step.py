"""One GRPO step: prompts -> cached video embeddings -> G rollouts each -> rewards -> advantages -> PPO updates.

    setup = GRPOSetup(adapter, tokenizer, engine, optimizer, source, state, cfg.rollout, cfg.algo, cfg.reward,
                      reference=Reference.frozen_copy(adapter) if cfg.algo.kl_coef else None, seed=cfg.run.seed)
    out = grpo_step(setup, data.next_batch(cfg.batch_size), step, draw_prompts=data.next_batch)
    out.metrics   # reward, reward/format, reward/accuracy, kl, entropy, clip_frac, ..., time/*

The stages, in order (the trainer and `longrl bench rl-step` both run exactly this):
1. Vision (MR-SP stage 1): each distinct video is encoded once, its frames sharded over the sp group, through
   the embedding cache (`longrl.rollout.prompts.encode_videos`). A prompt whose video cannot be decoded is
   reported (`StepOutput.failed`, `GRPOSetup.on_failed`) and replaced by a fresh one from `draw_prompts`.
2. Rollout: G = rollout.n responses per prompt from the engine, which reuses the cached embeddings (the vision
   tower never runs again this step). The prompts are cut into chunks (rollout.prompt_batch_size prompts, or
   this rank's 1/sp share); the sp ranks of a group take the chunks round-robin, generate, and
   all_gather_object the results, so every rank of the group ends with the same rollouts and the group does
   not generate the same thing sp times. Each chunk's sampler seed comes from (run seed, step, refill round,
   the chunk's first prompt's global index), so a resumed run samples exactly what it would have, and with
   prompt_batch_size = 1 the rollouts do not depend on sp at all.
3. Rewards (`compute_rewards`) and group advantages (`compute_advantages`). Dynamic sampling (DAPO): groups
   whose rewards all agree carry no gradient; they are dropped and a fresh batch of prompts is drawn, up to
   algo.max_refill_rounds times, until the step has as many informative groups as prompts (extra groups are
   cut). Reward metrics average over every response generated.
4. Old logprobs (policy in eval mode, no grad) and reference logprobs, via the SP prefill
   (`sp_token_logprobs`), at the rollout's logprob temperature (`SamplingParams.logprob_temperature`), in the
   same micro-batches as the first update. With one PPO epoch and one mini-batch (the default) the update is
   on-policy: without dropout the old logprobs would equal the update's own, so that prefill is skipped and
   the update's logprobs, detached, stand in (ratio exactly 1, as verl does; with dropout, e.g. LoRA's, they
   carry the update's dropout mask); this saves one forward of every sequence.
5. algo.ppo_epochs passes over mini-batches (algo.mini_batch_size sequences per dp rank; None = all), each
   split into micro-batches: clipped surrogate + kl_coef * KL, normalized by the counts of the whole
   mini-batch over all dp ranks (`GlobalCounts`), so any dp / micro-batch split gives the gradient of one big
   batch; backward; with PPO-ptx (`GRPOSetup.ptx`) the supervised term's backward on its own rows
   (`longrl.rl.ptx`); `sync_gradients` (sum over sp and dp); clip; optimizer step. The scheduler is the
   caller's.
TIS: the engine's own logprobs reweight the loss when tis is "on", or "auto" with an engine other than "hf"
(the hf engine's logprobs are the trainer's, up to float rounding).
FSDP (`longrl.train.fsdp`): stages 1-3 hold the policy's full weights (`gathered`: all of them for the hf
engine, which decodes with the trainer's model, else the token embeddings), and every dp rank runs the same
number of policy and reference forwards in stages 4-5 (`plan_batches(equal_micro=True)`: a rank with fewer
micro-batches runs zero-weight padding forwards), as FSDP's per-layer all-gathers need.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from longrl.models.base import ModelAdapter
from longrl.parallel.groups import ParallelState
from longrl.parallel.sp_attention import sp_attention
from longrl.parallel.sp_prefill import next_token_targets, sync_gradients
from longrl.rl.advantages import compute_advantages, zero_variance_mask
from longrl.rl.losses import GlobalCounts, kl_loss, policy_loss
from longrl.rl.ptx import PtxTerm, ptx_backward
from longrl.rl.reference import Reference, sequence_logprobs
from longrl.rl.rewards import RewardConfig, compute_rewards
from longrl.rl.sequences import SequenceBatch, build_sequences
from longrl.rollout.base import RolloutEngine, RolloutResult, SamplingParams
from longrl.rollout.hf import eval_mode
from longrl.rollout.prompts import VideoSource, encode_videos, rollout_batch_for
from longrl.train.fsdp import gathered, is_sharded
from longrl.train.metrics import StepTimer
from longrl.train.optim import clip_gradients

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.embedding_store import VideoEmbedding
    from longrl.train.config import AlgoConfig, RolloutConfig


@dataclass
class GRPOSetup:
    """Everything a GRPO step uses, as plain objects (the trainer builds it once; the bench builds its own).

    adapter: the policy; tokenizer: its tokenizer (prompts, decoded responses); engine: the rollout engine
    (any `RolloutEngine`); optimizer: over `params`; source: frame sampling + embedding cache + the sp group
    that shards the vision tower; state: this rank's place in the dp x sp grid; rollout / algo / reward: the
    `RLConfig` sections; reference: the KL reference (None: no KL term, no reference forward); seed: the run
    seed (sampling seeds derive from it); sp_attn: "ring" or "ulysses" (already resolved from "auto");
    max_grad_norm: clip (None: off); micro_batch_size: sequences per forward (None: algo.micro_batch_size when
    the config has it, else the whole mini-batch); autocast: context entered around forwards (bf16 on GPU);
    params: the trainable parameters (default: those of adapter.model that require grad);
    prefill_videos: called with each micro-batch before a prefill and returns the video embeddings to use
    (None: the cached ones; `bench rl-step`'s vanilla baseline re-encodes here). on_failed(example, reason):
    called when a prompt's video cannot be encoded, before a replacement is drawn (the trainer excludes the
    row, or raises for --on-bad-row fail); with_timestamps: the prompt names the sampled frames' times.
    ptx: PPO-ptx's supervised term, added to every optimizer step (None: off).
    """

    adapter: ModelAdapter
    tokenizer: Any
    engine: RolloutEngine
    optimizer: torch.optim.Optimizer
    source: VideoSource
    state: ParallelState
    rollout: RolloutConfig
    algo: AlgoConfig
    reward: RewardConfig = field(default_factory=RewardConfig)
    reference: Reference | None = None
    seed: int = 0
    sp_attn: str = "ring"
    max_grad_norm: float | None = 1.0
    micro_batch_size: int | None = None
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    params: list[nn.Parameter] | None = None
    prefill_videos: Callable[[SequenceBatch], list[torch.Tensor]] | None = None
    on_failed: Callable[[Example, str], None] | None = None
    with_timestamps: bool = False
    ptx: PtxTerm | None = None

    def trainable(self) -> list[nn.Parameter]:
        if self.params is None:
            self.params = [p for p in self.adapter.model.parameters() if p.requires_grad]
        return self.params

    def sampling_params(self, seed: int | None = None) -> SamplingParams:
        r = self.rollout
        return SamplingParams(
            n=r.n,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            seed=seed,
        )

    @property
    def micro(self) -> int | None:
        """Sequences per forward/backward (None: the whole mini-batch)."""
        return self.micro_batch_size or self.algo.micro_batch_size

    @property
    def use_tis(self) -> bool:
        return self.algo.tis == "on" or (self.algo.tis == "auto" and self.engine.name != "hf")


@dataclass
class StepOutput:
    """What one step did. metrics: floats (identical on every rank, averaged over dp). failed: prompts whose
    video could not be encoded, with the reason (the trainer excludes them from later batches). used: every
    prompt drawn this step (refills included). batch / old_logprobs / ref_logprobs: the trained sequences and
    their [N, L] logprobs before the update (ref None without a reference), for tests and inspection."""

    metrics: dict[str, float]
    failed: list[tuple[Example, str]]
    used: list[Example]
    batch: SequenceBatch | None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


# ---- small collective helpers ------------------------------------------------------------------------------


def _dp_reduce(values: Sequence[float], state: ParallelState, op=dist.ReduceOp.SUM) -> list[float]:
    """Element-wise SUM (or MAX) of `values` over the dp group (sp ranks of a group hold equal values)."""
    if state.dp_group is None:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(state))
    dist.all_reduce(t, op=op, group=state.dp_group)
    return t.tolist()


def _comm_device(state: ParallelState) -> torch.device:
    return state.device if state.device.type == "cuda" else torch.device("cpu")


def sampling_seed(run_seed: int, step: int, round_: int, prompt: int) -> int:
    """The sampler seed of a rollout chunk: a hash of (run seed, step, refill round, global prompt index)."""
    # 48 bits: engines add per-sample offsets (vLLM: seed + i * n + j) and must stay inside int64.
    return int(np.random.SeedSequence([run_seed, step, round_, prompt]).generate_state(1, np.uint64)[0] >> 16)


# ---- stages 1-3: rollouts ----------------------------------------------------------------------------------


@dataclass
class _Group:
    """One prompt's G responses, with what the sequences need."""

    example: Example
    prompt_ids: list[int]
    video: VideoEmbedding
    results: list[RolloutResult]
    advantages: torch.Tensor


@dataclass
class _Rollouts:
    groups: list[_Group]
    rewards: dict[str, list[float]]
    response_lengths: list[int]
    truncated: int
    groups_total: int
    rounds: int
    failed: list[tuple[Example, str]]
    used: list[Example]


def _generate_round(
    setup: GRPOSetup,
    examples: list[Example],
    videos: list[VideoEmbedding],
    keys: list[int],
    step: int,
    round_: int,
) -> tuple[list[list[int]], list[RolloutResult]]:
    """G responses for each of `examples` (keys: their global prompt indices, for seeds). Returns the prompts'
    ids and the results (prompt_index = position in `examples`), identical on every rank of the sp group."""
    state = setup.state
    sp, sp_rank = state.sp_size, state.sp_rank
    size = setup.rollout.prompt_batch_size or max(1, math.ceil(len(examples) / sp))
    chunks = [range(s, min(s + size, len(examples))) for s in range(0, len(examples), size)]
    mine = []
    for c, rows in enumerate(chunks):
        if c % sp != sp_rank:
            continue
        params = setup.sampling_params(sampling_seed(setup.seed, step, round_, keys[rows[0]]))
        with torch.no_grad(), setup.autocast():
            batch = rollout_batch_for(
                setup.adapter,
                setup.tokenizer,
                [examples[i] for i in rows],
                [videos[i] for i in rows],
                with_timestamps=setup.with_timestamps,
            )
            results = setup.engine.generate(batch, params)
        results = [replace(r, prompt_index=rows[r.prompt_index]) for r in results]
        mine.append((c, batch.prompt_ids(), results))
    if state.sp_group is not None:
        everyone: list[Any] = [None] * sp
        dist.all_gather_object(everyone, mine, group=state.sp_group)
        mine = sorted((item for part in everyone for item in part), key=lambda item: item[0])
    prompt_ids = [ids for _, chunk_ids, _ in mine for ids in chunk_ids]
    results = [r for _, _, chunk_results in mine for r in chunk_results]
    return prompt_ids, results


def _encode_prompts(
    setup: GRPOSetup,
    prompts: list[Example],
    draw_prompts: Callable[[int], list[Example]] | None,
    out: _Rollouts,
    timer: StepTimer,
) -> tuple[list[Example], list[VideoEmbedding]]:
    """The prompts whose videos encode, with their embeddings. A prompt whose video fails is reported
    (`out.failed`, `setup.on_failed`) and replaced by a freshly drawn one when `draw_prompts` is given."""
    examples, videos, pending = [], [], list(prompts)
    while pending:
        out.used += pending
        with timer.section("vision"), torch.no_grad(), setup.autocast():
            encoded = encode_videos(setup.adapter, [ex.video for ex in pending], setup.source)
        failed = 0
        for ex in pending:
            if ex.video in encoded.embeddings:
                examples.append(ex)
                videos.append(encoded.embeddings[ex.video])
                continue
            failed += 1
            reason = encoded.failed.get(ex.video, "the video could not be encoded")
            out.failed.append((ex, reason))
            if setup.on_failed is not None:
                setup.on_failed(
                    ex, reason
                )  # e.g. exclude it from the data, so the refill cannot draw it again
        pending = list(draw_prompts(failed)) if failed and draw_prompts is not None else []
    return examples, videos


def collect_rollouts(
    setup: GRPOSetup,
    prompts: list[Example],
    step: int,
    draw_prompts: Callable[[int], list[Example]] | None,
    timer: StepTimer,
) -> _Rollouts:
    """Stages 1-3 for this rank's prompts, with dynamic sampling's refill rounds (see the module docstring)."""
    algo, state = setup.algo, setup.state
    target = len(prompts)
    out = _Rollouts([], {}, [], 0, 0, 0, [], [])
    pending, round_ = list(prompts), 0
    setup.engine.wake()
    # FSDP: the HF engine decodes with the trainer's own model, a different number of forwards on each rank,
    # so the whole policy is gathered for the rollouts; other engines only need the token embeddings.
    own_model = getattr(setup.engine, "adapter", None) is setup.adapter
    with gathered(setup.adapter.model, everything=own_model):
        while True:
            examples, videos = _encode_prompts(setup, pending, draw_prompts, out, timer)
            # Seeds key on the prompt's global index: dp rank d's prompts follow those of ranks < d.
            keys = [state.dp_rank * target + i for i in range(len(examples))]
            with timer.section("rollout"):
                prompt_ids, results = _generate_round(setup, examples, videos, keys, step, round_)
            with timer.section("reward"):
                out.groups += _score_round(setup, examples, prompt_ids, videos, results, out)
            out.groups_total += len(examples)
            out.rounds = round_ + 1
            enough = len(out.groups) >= target
            no_refill = not algo.dynamic_sampling or round_ >= algo.max_refill_rounds or draw_prompts is None
            if enough or no_refill:
                break
            round_ += 1
            pending = list(draw_prompts(target))
    setup.engine.sleep()  # hand the accelerator memory to the trainer until the next rollouts
    out.groups = out.groups[:target]
    return out


def _score_round(
    setup: GRPOSetup,
    examples: list[Example],
    prompt_ids: list[list[int]],
    videos: list[VideoEmbedding],
    results: list[RolloutResult],
    out: _Rollouts,
) -> list[_Group]:
    """Rewards and advantages of one round's results; returns the groups to train on (all, or with dynamic
    sampling those whose rewards vary) and adds every response's rewards and length to `out`."""
    if not results:
        return []
    group = [r.prompt_index for r in results]
    rewards = compute_rewards(
        [r.text or "" for r in results],
        [examples[g].answer for g in group],
        [examples[g].options for g in group],
        categories=[examples[g].category for g in group],
        config=setup.reward,
    )
    for name, values in rewards.items():
        out.rewards.setdefault(name, []).extend(values.tolist())
    out.response_lengths += [len(r) for r in results]
    out.truncated += sum(r.finish_reason != "stop" for r in results)
    ids = torch.tensor(group)
    advantages = compute_advantages(setup.algo.advantage, rewards["total"], ids)
    flat = (
        zero_variance_mask(rewards["total"], ids)
        if setup.algo.dynamic_sampling
        else torch.zeros(len(group), dtype=torch.bool)
    )
    kept = []
    for p, ex in enumerate(examples):
        rows = [j for j, g in enumerate(group) if g == p]
        if rows and not bool(flat[rows[0]]):
            kept.append(_Group(ex, prompt_ids[p], videos[p], [results[j] for j in rows], advantages[rows]))
    return kept


def _sequences(groups: list[_Group], pad_id: int) -> SequenceBatch | None:
    if not groups:
        return None
    results, advantages = [], []
    for g, grp in enumerate(groups):
        results += [replace(r, prompt_index=g) for r in grp.results]
        advantages.append(grp.advantages)
    group_ids = torch.cat([torch.full((len(grp.results),), g) for g, grp in enumerate(groups)])
    return build_sequences(
        [grp.prompt_ids for grp in groups],
        [grp.video for grp in groups],
        results,
        torch.cat(advantages),
        group_ids,
        pad_id=pad_id,
    )


# ---- stages 4-5: logprobs and updates ----------------------------------------------------------------------


def plan_batches(
    n: int,
    mini_batch_size: int | None,
    micro_batch_size: int | None,
    state: ParallelState,
    *,
    equal_micro: bool = False,
) -> list[list[slice | None]]:
    """Mini-batches of this rank's n sequences, each a list of micro-batch row slices (possibly none).

    Every dp rank gets the same number of mini-batches (the largest any rank needs; ranks with fewer
    sequences get empty ones), so the gradient all-reduce after each mini-batch matches across ranks.
    equal_micro (FSDP: every forward is a collective over dp): each mini-batch also gets the same number of
    micro-batches on every rank, the missing ones as None (a padding forward of zero weight).
    """
    mini = mini_batch_size or max(n, 1)
    count = int(_dp_reduce([math.ceil(n / mini)], state, dist.ReduceOp.MAX)[0])
    plan: list[list[slice | None]] = []
    for k in range(count):
        start, stop = min(k * mini, n), min((k + 1) * mini, n)
        micro = micro_batch_size or max(stop - start, 1)
        plan.append([slice(s, min(s + micro, stop)) for s in range(start, stop, micro)])
    if equal_micro and plan:
        most = _dp_reduce([len(micro_batches) for micro_batches in plan], state, dist.ReduceOp.MAX)
        for micro_batches, total in zip(plan, most, strict=True):
            micro_batches += [None] * (int(total) - len(micro_batches))
    return plan


def padding_batch(pad_id: int, sp_size: int) -> SequenceBatch:
    """A text-only sequence of 2 * sp pad tokens scoring one token, no video: the forward a dp rank runs for
    a None micro-batch of `plan_batches(equal_micro=True)` (with zero weight in the loss)."""
    length = 2 * sp_size
    ids = torch.full((1, length), pad_id, dtype=torch.long)
    response = torch.zeros((1, length), dtype=torch.bool)
    response[0, 1] = True
    return SequenceBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        response_mask=response,
        targets=next_token_targets(ids, response),
        rollout_logprobs=torch.zeros((1, length), dtype=torch.float32),
        video_embeds=[],
        video_grid_thw=torch.zeros((0, 3), dtype=torch.long),
        second_per_grid_ts=torch.zeros(0, dtype=torch.float32),
        advantages=torch.zeros(1, dtype=torch.float32),
        group_ids=torch.zeros(1, dtype=torch.long),
        text_id=int(pad_id),
    )


def _micro(setup: GRPOSetup, batch: SequenceBatch, rows: slice) -> SequenceBatch:
    part = batch.select(rows)
    if setup.prefill_videos is not None:
        part = replace(part, video_embeds=setup.prefill_videos(part))
    return part


def _prefill_all(
    setup: GRPOSetup,
    batch: SequenceBatch | None,
    plan: list[list[slice | None]],
    scorer: Callable[[SequenceBatch], torch.Tensor],
) -> torch.Tensor | None:
    """[N, L] float32 logprobs of every sequence, scored micro-batch by micro-batch (the plan's first epoch);
    None micro-batches run the padding forward (FSDP), whose result is dropped. None without a batch."""
    out = None
    if batch is not None:
        out = torch.zeros(batch.targets.shape, dtype=torch.float32, device=setup.adapter.device)
    for micro_batches in plan:
        for rows in micro_batches:
            part = _padding(setup) if rows is None else _micro(setup, batch, rows)
            with setup.autocast():
                logp = scorer(part)
            if rows is not None:
                out[rows, : logp.shape[1]] = logp.float()
    return out


def _padding(setup: GRPOSetup) -> SequenceBatch:
    return padding_batch(setup.tokenizer.pad_token_id, setup.state.sp_size)


class _Means:
    """Token-weighted means of per-micro-batch metrics, summed over micro-batches and dp ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, torch.Tensor | float], weight: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def result(self, state: ParallelState, keys: Sequence[str]) -> dict[str, float]:
        sums = _dp_reduce(
            [self.sums.get(k, 0.0) for k in keys] + [self.weights.get(k, 0.0) for k in keys], state
        )
        n = len(keys)
        return {k: sums[i] / sums[n + i] for i, k in enumerate(keys) if sums[n + i] > 0}


UPDATE_KEYS = ("clip_frac", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl",
               "ratio_mean", "entropy", "kl", "tis_weight_mean", "tis_clip_frac", "ptx_loss")  # fmt: skip


def update_policy(
    setup: GRPOSetup,
    batch: SequenceBatch | None,
    old: torch.Tensor | None,
    ref: torch.Tensor | None,
    plan: list[list[slice]],
    temperature: float,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """algo.ppo_epochs passes over the plan's mini-batches; one optimizer step per mini-batch. old None (an
    on-policy update, `_on_policy`): each micro-batch's own logprobs, detached, are its old logprobs. Returns
    the metrics and the old logprobs used ([N, L] float32; None without a batch)."""
    algo, state, adapter = setup.algo, setup.state, setup.adapter
    on_policy = old is None
    if on_policy and batch is not None:
        assert _on_policy(algo, plan), "old logprobs are needed: more than one optimizer step on this batch"
        old = torch.zeros(batch.targets.shape, dtype=torch.float32, device=adapter.device)
    params = setup.trainable()
    device = adapter.device
    means = _Means()
    losses, norms, skipped = [], [], 0
    adapter.model.train()
    for _ in range(algo.ppo_epochs):
        for micro_batches in plan:
            rows_all = [i for rows in micro_batches if rows is not None for i in range(rows.start, rows.stop)]
            mask_all = batch.loss_mask[rows_all] if rows_all else torch.zeros(0, 1, dtype=torch.bool)
            seq_tokens = mask_all.sum(-1)
            tokens, seqs = _dp_reduce([float(seq_tokens.sum()), float((seq_tokens > 0).sum())], state)
            loss_total = pg_total = 0.0
            for rows in micro_batches:
                if rows is None:  # FSDP: this rank has fewer micro-batches; match the others' collectives
                    _padding_backward(setup, temperature)
                    continue
                part = _micro(setup, batch, rows)
                with setup.autocast():
                    logp, entropy = sequence_logprobs(
                        adapter, part, state, temperature=temperature, attn=setup.sp_attn, return_entropy=True
                    )
                width = logp.shape[1]
                if on_policy:
                    old[rows, :width] = logp.detach().float()
                mask = part.loss_mask.to(device)
                counts = GlobalCounts(tokens=tokens, seq_tokens=mask.sum(-1), seqs=seqs)
                loss, metrics = policy_loss(
                    logp,
                    old[rows, :width],
                    part.advantages.to(device),
                    mask,
                    clip_low=algo.clip_low,
                    clip_high=algo.clip_high,
                    dual_clip=algo.dual_clip,
                    agg_mode=algo.agg_mode,
                    counts=counts,
                    rollout_logprobs=part.rollout_logprobs.to(device) if setup.use_tis else None,
                    tis_cap=algo.tis_cap,
                    entropy=entropy,
                )
                if ref is not None:
                    kl, kl_metrics = kl_loss(
                        logp,
                        ref[rows, :width],
                        mask,
                        estimator=algo.kl_estimator,
                        agg_mode=algo.agg_mode,
                        counts=counts,
                    )
                    metrics.update(kl_metrics)
                    if algo.kl_coef:
                        loss = loss + algo.kl_coef * kl
                # Backward inside the SP block: activation checkpointing recomputes the decoder layers, and so
                # their SP attention, during backward.
                with sp_attention(adapter, state.sp_group, setup.sp_attn):
                    loss.backward()
                loss_total += float(loss.detach())
                # Each micro-batch's loss is its share of the mini-batch loss (global counts): they add up.
                pg_total += float(metrics.pop("pg_loss"))
                means.add(metrics, float(mask.sum()))
            if setup.ptx is not None and tokens > 0:  # the term's weight is per GRPO update (longrl.rl.ptx)
                ptx_loss = ptx_backward(
                    setup,
                    setup.ptx,
                    lambda values: _dp_reduce(values, state),
                    setup.micro,
                )
                means.add({"ptx_loss": ptx_loss}, 1.0)
            sync_gradients(params, state, dp_reduce="sum")
            norm = clip_gradients(params, setup.max_grad_norm)
            # An all-empty mini-batch (every group dropped on every rank) has nothing to learn: AdamW would still
            # move the weights (momentum, decay). A non-finite norm is skipped too (identical on every rank).
            if tokens > 0 and math.isfinite(norm):
                setup.optimizer.step()
                norms.append(norm)
            else:
                skipped += 1
            setup.optimizer.zero_grad(set_to_none=True)
            losses.append(_dp_reduce([loss_total, pg_total], state))
    out = means.result(state, UPDATE_KEYS)
    out["loss"] = float(np.mean([t[0] for t in losses])) if losses else 0.0
    out["pg_loss"] = float(np.mean([t[1] for t in losses])) if losses else 0.0
    out["grad_norm"] = float(np.mean(norms)) if norms else 0.0
    out["updates"] = float(len(losses) - skipped)
    out["updates_skipped"] = float(skipped)
    return out, old


def _on_policy(algo: AlgoConfig, plan: list[list[slice | None]]) -> bool:
    """One optimizer step on this batch (one PPO epoch, at most one mini-batch, the same count on every rank):
    the policy that scores the update is the one that sampled, so no separate old-logprob pass is needed."""
    return algo.ppo_epochs == 1 and len(plan) <= 1


def _padding_backward(setup: GRPOSetup, temperature: float) -> None:
    """Forward and backward of the padding sequence with zero weight: the FSDP all-gathers and gradient
    reductions of one micro-batch, adding exactly 0 to every gradient."""
    adapter, state = setup.adapter, setup.state
    with setup.autocast():
        logp = sequence_logprobs(adapter, _padding(setup), state, temperature=temperature, attn=setup.sp_attn)
    with sp_attention(adapter, state.sp_group, setup.sp_attn):
        (logp.sum() * 0.0).backward()


def _store_counts(setup: GRPOSetup) -> tuple[int, int]:
    store = setup.source.store
    if store is None:
        return 0, 0
    c = store.counts
    return c["hits"] + c["disk_hits"], c["misses"] + c["bypassed"]


def grpo_step(
    setup: GRPOSetup,
    prompts: list[Example],
    step: int,
    draw_prompts: Callable[[int], list[Example]] | None = None,
) -> StepOutput:
    """One GRPO step on this rank's `prompts` (a collective over the world: every rank calls it each step).

    step: the step number (0-based; part of the sampling seeds). draw_prompts(n): more prompts for dynamic
    sampling's refills (e.g. `TrainData.next_batch`); None: no refills. The sp ranks of a group must pass the
    same prompts. See the module docstring for the stages.
    """
    state, algo = setup.state, setup.algo
    timer = StepTimer(sync_cuda=setup.adapter.device.type == "cuda")
    start = time.perf_counter()
    hits0, misses0 = _store_counts(setup)
    rollouts = collect_rollouts(setup, prompts, step, draw_prompts, timer)
    hits1, misses1 = _store_counts(setup)
    batch = _sequences(rollouts.groups, setup.tokenizer.pad_token_id)
    n = len(batch) if batch is not None else 0
    micro = setup.micro
    sharded = is_sharded(setup.adapter.model)
    plan = plan_batches(n, algo.mini_batch_size, micro, state, equal_micro=sharded)
    temperature = setup.sampling_params().logprob_temperature

    old = ref = None
    # FSDP: a rank without sequences still runs the others' number of forwards (padding).
    prefills = batch is not None or sharded
    if prefills and not _on_policy(algo, plan):
        with timer.section("old"), torch.no_grad(), eval_mode(setup.adapter.model):
            old = _prefill_all(
                setup, batch, plan,
                lambda part: sequence_logprobs(setup.adapter, part, state, temperature=temperature, attn=setup.sp_attn),
            )  # fmt: skip
    if prefills and setup.reference is not None:
        with timer.section("ref"):
            ref = _prefill_all(
                setup, batch, plan,
                lambda part: setup.reference.logprobs(part, state, temperature=temperature, attn=setup.sp_attn),
            )  # fmt: skip
    with timer.section("update"):
        update, old = update_policy(setup, batch, old, ref, plan, temperature)

    metrics = _rollout_metrics(rollouts, state)
    metrics.update(update)
    metrics["lr"] = float(setup.optimizer.param_groups[0]["lr"])
    lookups = (hits1 - hits0) + (misses1 - misses0)
    if setup.source.store is not None and lookups:
        metrics["cache_hit_rate"] = (hits1 - hits0) / lookups
    metrics.update(timer.totals())
    metrics["time/step"] = time.perf_counter() - start
    return StepOutput(metrics, rollouts.failed, rollouts.used, batch, old, ref)


def _rollout_metrics(rollouts: _Rollouts, state: ParallelState) -> dict[str, float]:
    """Reward means, response length, group counts: summed over the dp ranks, then averaged."""
    names = sorted(rollouts.rewards)
    lengths = rollouts.response_lengths
    local = [sum(rollouts.rewards[k]) for k in names] + [
        float(len(lengths)),
        float(sum(lengths)),
        float(max(lengths, default=0)),
        float(rollouts.truncated),
        float(rollouts.groups_total),
        float(len(rollouts.groups)),
        float(rollouts.rounds),
        float(len(rollouts.failed)),
    ]
    total = _dp_reduce(local, state)
    longest = _dp_reduce([local[len(names) + 2]], state, dist.ReduceOp.MAX)[0]
    count, length_sum, _, truncated, groups_total, kept, rounds, failed = total[len(names) :]
    out: dict[str, float] = {}
    for i, k in enumerate(names):
        key = "reward" if k == "total" else f"reward/{k}"
        out[key] = total[i] / count if count else 0.0
    out["response_len"] = length_sum / count if count else 0.0
    out["response_len_max"] = longest
    out["response_truncated_frac"] = truncated / count if count else 0.0
    out["groups_total"] = groups_total
    out["groups_kept"] = kept
    out["rollout_rounds"] = rounds / state.dp_size
    out["videos_failed"] = failed
    return out
