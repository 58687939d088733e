"""MR-SP stage 2: sequence-parallel prefill of [prompt | video | response] with per-token logprobs.

    targets = next_token_targets(input_ids, response_mask)          # shift once, globally, before sharding
    logp = sp_token_logprobs(adapter, inputs, targets, state, attn="ring")   # [B, L] on every sp rank
    loss = ...(logp)...; loss.backward(); sync_gradients(model, state)

Each sp rank takes its zigzag shard (`longrl.ops.pad_and_shard`: 2*sp chunks, rank r holds chunks r and
2sp-1-r) of the embeddings, the 3-D position ids and the targets, runs the decoder on it with SP attention
(`sp_attention`), the final norm and the fused `longrl.ops.token_logprobs`, and the shards' logprobs are
gathered and put back in order with `longrl.ops.unshard`. Nothing of length L x hidden is built past the
embeddings, which every rank already holds.

Padding. The batch must be RIGHT-padded (left padding raises ValueError): SP attention takes no mask and
relies on causality, which keeps both the batch's right padding and the shard padding (pad_and_shard pads
the end of the sequence up to a multiple of 2*sp) after every real row. The shard padding rows get
embedding 0, position 0 and target -100; the batch's own right-padding rows keep the embeddings and
positions the caller built for them (the pad token's) and get target -100 (attention_mask 0). Neither
matters for the real rows: under causal attention no real row ever attends to a padded one.

Gradients. Every sp rank holds the full-sequence logprobs and must compute the SAME loss from them (the
gather's backward keeps only this rank's rows, without communication). A rank's parameter gradients then
cover only its shard's tokens: sum them over the sp group, e.g. with `sync_gradients`, which also sums (or
averages) over the dp replicas. Wrappers that average over all ranks (DDP/FSDP with every rank as a
replica) compute sum / (dp * sp): scale the loss by sp (sum over dp) or sp * dp first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from longrl import ops
from longrl.models.base import ModelAdapter, MultimodalInputs
from longrl.ops import ShardSpec
from longrl.parallel.groups import ParallelState
from longrl.parallel.sp_attention import sp_attention

IGNORE_INDEX = -100


def check_right_padded(attention_mask: torch.Tensor) -> None:
    """Raise ValueError unless every row of attention_mask [B, L] is ones followed by zeros."""
    mask = attention_mask.bool()
    # Right padded <=> the mask never goes 0 -> 1 along a row.
    if (~mask[:, :-1] & mask[:, 1:]).any():
        raise ValueError(
            "sequence-parallel prefill needs right-padded batches (real tokens first, padding at the end); "
            "got a row with padding before a real token (left padding?)"
        )


def next_token_targets(input_ids: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Targets [B, L] int64 for logprobs at every position: targets[:, i] = input_ids[:, i+1] where token
    i+1 is scored (score_mask [B, L] bool/int, e.g. the response tokens), else -100; the last column is -100.

    The shift is done here, on the whole sequence, before any sharding (a shard's last row needs the first
    token of the next chunk, which lives on another rank).
    """
    targets = torch.full_like(input_ids, IGNORE_INDEX, dtype=torch.long)
    nxt = input_ids[:, 1:].long()
    targets[:, :-1] = torch.where(score_mask[:, 1:].bool(), nxt, torch.full_like(nxt, IGNORE_INDEX))
    return targets


@dataclass
class SPShard:
    """This rank's shard of a batch (all [B, Ls] along the sequence, Ls = spec.shard_length).

    inputs_embeds [B, Ls, H]; position_ids [3, B, Ls] int64; targets [B, Ls] int64 (-100 = not scored);
    spec: the ShardSpec of the sequence dim of [B, L] tensors (dim 1), what `unshard` needs.
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    spec: ShardSpec


def shard_batch(
    inputs: MultimodalInputs, targets: torch.Tensor, state: ParallelState, *, layout: str = "zigzag"
) -> SPShard:
    """Pad and shard one right-padded batch for this rank (differentiable w.r.t. inputs_embeds).

    inputs: inputs_embeds [B, L, H], position_ids [3, B, L], attention_mask [B, L] (right padding);
    targets [B, L] (see `next_token_targets`; ignored where attention_mask is 0).
    """
    check_right_padded(inputs.attention_mask)
    b, length = inputs.attention_mask.shape
    if inputs.inputs_embeds.shape[:2] != (b, length) or inputs.position_ids.shape != (3, b, length):
        raise ValueError(
            f"inputs disagree: embeds {tuple(inputs.inputs_embeds.shape)}, positions "
            f"{tuple(inputs.position_ids.shape)}, mask {tuple(inputs.attention_mask.shape)}"
        )
    if targets.shape != (b, length):
        raise ValueError(f"targets must be [B, L] = {(b, length)}, got {tuple(targets.shape)}")
    targets = targets.long().masked_fill(~inputs.attention_mask.bool(), IGNORE_INDEX)
    kw = {"sp_size": state.sp_size, "rank": state.sp_rank, "layout": layout}
    embeds, spec = ops.pad_and_shard(inputs.inputs_embeds, dim=1, pad_value=0, **kw)
    positions, _ = ops.pad_and_shard(inputs.position_ids, dim=2, pad_value=0, **kw)
    shard_targets, _ = ops.pad_and_shard(targets, dim=1, pad_value=IGNORE_INDEX, **kw)
    return SPShard(embeds, positions, shard_targets, spec)


def sp_shard_logprobs(
    adapter: ModelAdapter,
    shard: SPShard,
    state: ParallelState,
    *,
    attn: str = "ring",
    layout: str = "zigzag",
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decoder + final norm + fused logprobs on this rank's shard: [B, Ls] float32 (0 where target is -100),
    and the entropy [B, Ls] with return_entropy. A collective over the sp group (attention)."""
    with sp_attention(adapter, state.sp_group, attn, layout=layout):
        hidden = adapter.forward(shard.inputs_embeds, shard.position_ids, None)
    weight = adapter.lm_head_weight
    if isinstance(weight, DTensor):
        raise RuntimeError(
            "the LM head is an FSDP shard here: run the forward inside longrl.train.fsdp.forward_region"
        )
    return ops.token_logprobs(
        hidden, weight, shard.targets, temperature=temperature, return_entropy=return_entropy
    )


class _GatherShards(torch.autograd.Function):
    """all_gather of equal-size shards along `dim` (rank order, concatenated). Backward: this rank's slice of
    the gradient, no communication (valid because every rank computes the same loss from the result)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.dim, ctx.rank, ctx.size = dim, dist.get_rank(group), local.shape[dim]
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.narrow(ctx.dim, ctx.rank * ctx.size, ctx.size), None, None


def gather_unshard(local: torch.Tensor, spec: ShardSpec, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's shard [B, Ls, ...] (sequence dim spec.dim) -> the full [B, L, ...] in order, on all ranks."""
    if group is not None and dist.get_world_size(group) > 1:
        local = _GatherShards.apply(local, spec.dim, group)
    return ops.unshard(local, spec)


def sp_token_logprobs(
    adapter: ModelAdapter,
    inputs: MultimodalInputs,
    targets: torch.Tensor,
    state: ParallelState,
    *,
    attn: str = "ring",
    layout: str = "zigzag",
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token logprobs of a right-padded batch, computed sequence-parallel over state.sp_group.

    inputs: MultimodalInputs of the batch (inputs_embeds [B, L, H], position_ids [3, B, L], attention_mask
    [B, L] right-padded), identical on every sp rank; targets [B, L] int64 next-token ids (-100: not scored;
    see `next_token_targets`); attn "ring" or "ulysses". Returns logprobs [B, L] float32 (0 where not scored),
    and entropy [B, L] with return_entropy, equal on every sp rank to the single-process model's
    log_softmax(logits / temperature) gathered at the targets. Works under no_grad (old/reference policy)
    and with grad (policy update; then see the module docstring on gradient sync). A collective: every rank
    of the sp group calls it with the same batch.
    """
    shard = shard_batch(inputs, targets, state, layout=layout)
    out = sp_shard_logprobs(
        adapter,
        shard,
        state,
        attn=attn,
        layout=layout,
        temperature=temperature,
        return_entropy=return_entropy,
    )
    if not return_entropy:
        return gather_unshard(out, shard.spec, state.sp_group)
    logp, entropy = out
    both = gather_unshard(torch.stack((logp, entropy), dim=-1), shard.spec, state.sp_group)
    return both[..., 0], both[..., 1]


def sync_gradients(
    params: nn.Module | Iterable[nn.Parameter], state: ParallelState, *, dp_reduce: str = "sum"
) -> None:
    """Sum parameter gradients over the sp group, then sum ("sum") or average ("mean") them over dp.

    Use "sum" when each replica's loss is already normalized by the GLOBAL token count (the sum of the
    replicas' losses is the loss), "mean" when each replica normalizes by its own. Parameters that require
    grad but have none on this rank take part as zeros (keeps the collectives matched across ranks).
    Gradients are flattened into one buffer per dtype/device, so this is one all-reduce per dtype.
    FSDP-sharded parameters (DTensors) are skipped: FSDP already summed their gradients over dp and sp
    (`longrl.train.fsdp`); only the others (e.g. a replicated, trainable vision tower) are reduced here.
    """
    if dp_reduce not in ("sum", "mean"):
        raise ValueError(f"dp_reduce must be 'sum' or 'mean', got {dp_reduce!r}")
    if not state.distributed:
        return
    if isinstance(params, nn.Module):
        params = params.parameters()
    params = list(params)
    if dp_reduce == "mean" and state.dp_size > 1 and any(isinstance(p, DTensor) for p in params):
        # FSDP summed the sharded gradients over dp; averaging only the others would mix two scales.
        raise ValueError(
            "dp_reduce='mean' with FSDP-sharded parameters: normalize the loss globally, use 'sum'"
        )
    params = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in params:
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for bucket in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        # sp and dp groups tile the world (world = dp * sp), so one world all-reduce sums over both.
        dist.all_reduce(flat)
        if dp_reduce == "mean" and state.dp_size > 1:
            flat /= state.dp_size
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n
