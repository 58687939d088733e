"""Ulysses attention: all-to-all from sequence sharding to head sharding, plain attention, and back.

Each of the sp ranks holds all heads of its slice of the sequence. One all-to-all gives every rank H/sp heads
of the *whole* sequence; it runs ordinary (causal) attention on them and a second all-to-all returns the
output to sequence sharding. The gathered sequence arrives in shard order (rank 0's shard, rank 1's, ...):
for the zigzag layout that is chunks 0, 2sp-1, 1, 2sp-2, ..., so it is permuted to natural order before the
attention and back after it (contiguous shards already arrive in order).

GQA: rank i gets query heads [i*H/sp, (i+1)*H/sp), which need KV heads [i*Hkv/sp, (i+1)*Hkv/sp) when sp
divides Hkv. Otherwise each KV head is repeated f = sp / gcd(Hkv, sp) times first (repeat_interleave, so query
head h still maps to its own KV head: h // (H/(f*Hkv)) // f == h // (H/Hkv)), the smallest factor making
f*Hkv a multiple of sp; it divides H because H is a multiple of both sp and Hkv.

Memory per rank: q/k/v/out for H/sp heads of the full padded length P = sp*Ls: the same element count as the
shard (plus the KV repetition), with transient copies for the all-to-all buffers and the zigzag permutation.
Communication: 4 all-to-alls forward (q, packed k|v, out) and their adjoints in backward.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist

from longrl.ops import ShardSpec
from longrl.parallel.comm import group_size, heads_to_seq, seq_to_heads
from longrl.parallel.ring_attention import check_args, local_attention


def gathered_positions(sp: int, shard_length: int, layout: str) -> torch.Tensor:
    """int64 [sp * shard_length]: the global position of each row of the rank-order concatenation of shards."""
    padded = sp * shard_length
    spec = ShardSpec(length=padded, padded_length=padded, dim=2, sp_size=sp, layout=layout)
    return torch.cat([spec.positions(r) for r in range(sp)])


@functools.lru_cache(maxsize=32)
def _zigzag_orders(sp: int, shard_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, natural) on the CPU, cached (every layer of a prefill asks for the same pair; read only).

    positions[i] = global position of gathered row i; natural[p] = gathered row holding position p.
    """
    positions = gathered_positions(sp, shard_length, "zigzag")
    return positions, torch.argsort(positions)


def kv_repeat_factor(kv_heads: int, sp: int) -> int:
    """How many times each KV head is repeated so that the KV heads split evenly over sp ranks."""
    return sp // math.gcd(kv_heads, sp)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    *,
    causal: bool = True,
    layout: str = "zigzag",
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention of a sequence sharded across `group`, by all-to-all to head sharding (differentiable).

    Same contract as `ring_attention`: q [B, H, Ls, D], k and v [B, Hkv, Ls, D], this rank's shard in
    `layout` ("zigzag" or "contiguous"); returns out [B, H, Ls, D] in q's dtype, the rows of this shard of
    full attention over the whole padded sequence. H must be divisible by the group size (ValueError
    otherwise); KV heads are repeated when the group size does not divide Hkv. group None or of size 1:
    plain attention.
    """
    check_args("ulysses_attention", q, k, v, layout)
    sp = group_size(group)
    if sp == 1 or q.shape[2] == 0:
        return local_attention(q, k, v, causal=causal, scale=scale)
    b, h, ls, _ = q.shape
    if h % sp:
        raise ValueError(
            f"ulysses_attention: {h} query heads cannot be split over {sp} ranks; use a group size that "
            "divides the head count, or ring attention"
        )
    repeat = kv_repeat_factor(k.shape[1], sp)
    if repeat > 1:
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    qh = seq_to_heads(q, group)
    kvh = seq_to_heads(torch.cat((k, v)), group)  # k and v in one all-to-all (stacked along batch)
    kh, vh = kvh[:b], kvh[b:]
    if layout == "contiguous":  # the shards arrive in natural order
        return heads_to_seq(local_attention(qh, kh, vh, causal=causal, scale=scale), group)
    positions, natural = (t.to(q.device) for t in _zigzag_orders(sp, ls))
    qh, kh, vh = (t.index_select(2, natural) for t in (qh, kh, vh))
    out = local_attention(qh, kh, vh, causal=causal, scale=scale)
    out = out.index_select(2, positions)  # back to shard order: row i holds position positions[i]
    return heads_to_seq(out, group)
