"""Ring attention: exact attention over a sequence sharded across an sp group, K/V passed rank to rank.

Each of the sp ranks holds q, k, v of its shard. In sp steps every rank sees every other rank's K/V: at step
j rank r holds the K/V of rank s = (r - j) mod sp, computes its queries against them with
`longrl.ops.block_attention` (which returns the block's LSE) and folds the result into fp32 accumulators with
`longrl.ops.lse_merge_`. Before computing step j it posts the transfer that step j+1 needs (send the K/V it
holds to r+1, receive the next from r-1; `batch_isend_irecv`), so the transfer runs while the block computes
and is waited for only afterwards.

Zigzag layout (causal balance): the padded sequence is cut into 2*sp chunks of C positions, rank r holds
chunks (r, 2sp-1-r) in that order. Which keys a rank's queries see from source rank s (causal):
  s == r  own chunks (r, 2sp-1-r) against themselves: chunk r sees itself causally, not chunk 2sp-1-r (later);
          chunk 2sp-1-r sees all of chunk r (earlier) and itself causally. In shard-local indices that is the
          plain lower triangle over the 2C rows, so the mode is "causal".
  s <  r  source chunks (s, 2sp-1-s): s is before both own chunks, 2sp-1-s after both -> every query sees the
          first half of the keys: "kv_first_half".
  s >  r  s and 2sp-1-s both lie between r and 2sp-1-r -> only the second query chunk sees them, all of
          them: "q_second_half".
Every step costs the same (C x 2C or 2C x C keys) except the diagonal, which is why zigzag balances the ring.
Contiguous layout (one chunk per rank): non-causal steps are "full"; causal: diagonal "causal", s < r "full",
s > r nothing to compute (supported, but rank sp-1 does sp times the work of rank 0). Non-causal zigzag: "full".

Backward: the K/V go round the ring again, this time together with a dK/dV accumulator that travels with
them (one fp32 tensor per block, stacked [2, B, Hkv, Ls, D]). At step j rank r holds the K/V of source s,
computes the block's gradients with `block_attention_backward` given the *merged* out/lse of its queries
(which makes them the block's exact share of the full gradient), adds dK/dV to the accumulator it received
for s and sends it on. After step sp-1 the accumulator held for s = r+1 has collected all sp contributions;
one last shift delivers every accumulator home. dQ stays local (fp32). Block gradients come back in fp32
(grad_dtype), so for fp16/bf16 inputs each dQ/dK/dV element is rounded to the input dtype once, at the end,
not once per ring step. Not everything is fp32: `out` is saved for backward in q's dtype (as a flash
attention saves it), so rowsum(dout * out) sees the rounded out. The K/V shift of step j+1 is posted
before step j computes; the dK/dV shift of step j is posted after it and waited for only after step j+1's
compute, so both transfers overlap compute.

Memory per rank (no full-sequence tensor is ever built): q/k/v/out of the shard, two packed K/V buffers
[2, B, Hkv, Ls, D] (the one computed on and the one arriving), fp32 accumulators out [B, H, Ls, D] and lse
[B, H, Ls]; in backward also fp32 dQ [B, H, Ls, D], one step's fp32 block gradients (dq [B, H, Ls, D], dk
and dv [B, Hkv, Ls, D]) and up to three fp32 dK/dV buffers [2, B, Hkv, Ls, D] (being received, updated,
sent). Scores are bounded by the block op (chunked/fused). K/V travel with their Hkv heads (GQA is never
expanded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from longrl import ops
from longrl.parallel.comm import Ring, group_size

LAYOUTS = ("zigzag", "contiguous")
_KV_TAG = 7001  # forward and backward K/V shifts
_DKV_TAG = 7002  # backward dK/dV accumulator shifts

# Test seam: when set, called as TRACE(event, step) at each ring event in program order, for checking that a
# transfer is posted before the block it overlaps is computed. Events: "post", "compute", "wait" (forward),
# "bwd_post", "bwd_compute", "bwd_wait" (backward; for the K/V shift). None in normal use.
TRACE: Callable[[str, int], None] | None = None


def _trace(event: str, step: int) -> None:
    if TRACE is not None:
        TRACE(event, step)


def check_args(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> None:
    """Validate sequence-parallel attention inputs; raise ValueError naming the problem."""
    if layout not in LAYOUTS:
        raise ValueError(f"{name}: layout must be one of {LAYOUTS}, got {layout!r}")
    for label, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: {label} must be 4-D [B, heads, Ls, D], got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v must have one shape, got {tuple(k.shape)} / {tuple(v.shape)}")
    b, h, ls, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, ls, d):
        raise ValueError(
            f"{name}: q [B, H, Ls, D] = {tuple(q.shape)} and k [B, Hkv, Ls, D] = {tuple(k.shape)} must agree "
            "on B, Ls and D"
        )
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"{name}: query heads ({h}) must be a multiple of key/value heads ({k.shape[1]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{name}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if layout == "zigzag" and ls % 2:
        raise ValueError(f"{name}: a zigzag shard holds two equal chunks, so Ls must be even, got {ls}")


# ----------------------------------------------------------------------------------------------------------
# plain (single-process) attention, differentiable: the sp = 1 case and the inner attention of Ulysses
# ----------------------------------------------------------------------------------------------------------


class _LocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mode: str, scale: float | None):  # type: ignore[override]
        out, lse = ops.block_attention(q, k, v, mode=mode, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mode, ctx.scale = mode, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        # fp32 gradients rounded here once: fp16/bf16 kernels (the aten CPU one) round intermediates as well.
        grads = ops.block_attention_backward(
            dout, q, k, v, out, lse, mode=ctx.mode, scale=ctx.scale, grad_dtype=torch.float32
        )
        return *(g.to(t.dtype) for g, t in zip(grads, (q, k, v), strict=True)), None, None


def local_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """Differentiable attention of a whole (unsharded) sequence: q [B, H, L, D], k/v [B, Hkv, L, D] -> [B, H, L, D].

    Forward and backward go through `ops.block_attention` / `block_attention_backward` (mode "causal" or
    "full"), so no [L, L] matrix is held whole and GQA K/V are not expanded.
    """
    return _LocalAttention.apply(q, k, v, "causal" if causal else "full", scale)


# ----------------------------------------------------------------------------------------------------------
# the ring
# ----------------------------------------------------------------------------------------------------------


def step_mode(layout: str, causal: bool, rank: int, source: int) -> str | None:
    """block_attention mode for this rank's queries against source rank's K/V; None when nothing is visible."""
    if not causal:
        return "full"
    if source == rank:
        return "causal"
    if layout == "zigzag":
        return "kv_first_half" if source < rank else "q_second_half"
    return "full" if source < rank else None


def _merge_block(
    acc_out: torch.Tensor, acc_lse: torch.Tensor, blk_out: torch.Tensor, blk_lse: torch.Tensor, mode: str
) -> None:
    """Fold a block result into the per-chunk accumulators acc_out [slots, B, H, C, D], acc_lse [slots, B, H, C].

    One accumulator per chunk keeps every lse_merge_ target contiguous; "q_second_half" results cover only
    the second chunk's rows.
    """
    if mode == "q_second_half":
        ops.lse_merge_(acc_out[1], acc_lse[1], blk_out, blk_lse)
        return
    c = acc_out.shape[3]
    for slot in range(acc_out.shape[0]):
        rows = slice(slot * c, (slot + 1) * c)
        ops.lse_merge_(acc_out[slot], acc_lse[slot], blk_out[:, :, rows], blk_lse[:, :, rows])


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal: bool, layout: str, scale: float | None):  # type: ignore[override]
        ring = Ring(group)
        b, h, ls, d = q.shape
        slots = 2 if layout == "zigzag" else 1
        c = ls // slots
        acc_out = torch.zeros(slots, b, h, c, d, dtype=torch.float32, device=q.device)
        acc_lse = torch.full((slots, b, h, c), float("-inf"), dtype=torch.float32, device=q.device)
        kv = torch.stack((k, v))  # one message per step: [2, B, Hkv, Ls, D]
        for step in range(ring.size):
            source = (ring.rank - step) % ring.size
            # Post the transfer for the next step first, so it runs while this block is computed.
            pending = None
            if step < ring.size - 1:
                pending = ring.shift(kv, _KV_TAG)
                _trace("post", step)
            mode = step_mode(layout, causal, ring.rank, source)
            if mode is not None:
                blk_out, blk_lse = ops.block_attention(q, kv[0], kv[1], mode=mode, scale=scale)
                _merge_block(acc_out, acc_lse, blk_out, blk_lse, mode)
            _trace("compute", step)
            if pending is not None:
                kv = pending.wait()
                _trace("wait", step)
        out = acc_out.permute(1, 2, 0, 3, 4).reshape(b, h, ls, d).to(q.dtype)
        lse = acc_lse.permute(1, 2, 0, 3).reshape(b, h, ls).contiguous()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.causal, ctx.layout, ctx.scale = group, causal, layout, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        ring = Ring(ctx.group)
        ls = q.shape[2]
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        # Rows of the second chunk, for the "q_second_half" steps (sliced once, used up to sp-1 times).
        half = ls // 2
        second = (dout[:, :, half:], out[:, :, half:], lse[:, :, half:])
        kv = torch.stack((k, v))
        dkv_pending = None  # the dK/dV accumulator of the block this rank will hold next, in flight
        for step in range(ring.size):
            source = (ring.rank - step) % ring.size
            kv_pending = None
            if step < ring.size - 1:
                kv_pending = ring.shift(kv, _KV_TAG)
                _trace("bwd_post", step)
            mode = step_mode(ctx.layout, ctx.causal, ring.rank, source)
            grads = None
            if mode is not None:
                do, o, lse_rows = second if mode == "q_second_half" else (dout, out, lse)
                # float32 block gradients: rounding each step's share to fp16/bf16 before it is added to the
                # fp32 accumulators would add up to sp roundings per element.
                grads = ops.block_attention_backward(
                    do, q, kv[0], kv[1], o, lse_rows, mode=mode, scale=ctx.scale, grad_dtype=torch.float32
                )
                dq += grads[0]
            _trace("bwd_compute", step)
            # The accumulator for `source` (sent by rank r-1 after its previous step) is needed only now.
            if dkv_pending is None:
                dkv = torch.zeros((2, *k.shape), dtype=torch.float32, device=k.device)
            else:
                dkv = dkv_pending.wait()
            if grads is not None:
                dkv[0] += grads[1]
                dkv[1] += grads[2]
            # Send it on; after the last step this shift brings every accumulator home.
            dkv_pending = ring.shift(dkv, _DKV_TAG)
            if kv_pending is not None:
                kv = kv_pending.wait()
                _trace("bwd_wait", step)
        dkv = dkv_pending.wait()
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    *,
    causal: bool = True,
    layout: str = "zigzag",
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention of a sequence sharded across `group`, K/V passed around the ring (differentiable).

    q [B, H, Ls, D], k and v [B, Hkv, Ls, D] (H a multiple of Hkv), float32/float16/bfloat16: this rank's
    shard in `layout` ("zigzag": chunks r and 2sp-1-r of the padded sequence, Ls/2 each; "contiguous": chunk
    r), as made by `longrl.ops.pad_and_shard`. Returns out [B, H, Ls, D] in q's dtype: the rows of this
    shard of full attention over the whole padded sequence (causal or not). Padding sits at the end of the
    sequence, so with causal=True it never reaches a real row; with causal=False padding keys are visible
    (there is no mask argument). `scale` defaults to D ** -0.5. group None or of size 1: plain attention.
    All ranks of the group must call this together with equal shapes.
    """
    check_args("ring_attention", q, k, v, layout)
    if group_size(group) == 1 or q.shape[2] == 0:  # every shard has the same length: all ranks agree
        return local_attention(q, k, v, causal=causal, scale=scale)
    return _RingAttention.apply(q, k, v, group, causal, layout, scale)
