"""Triton block attention for ring attention: flash-style forward returning (out, lse) and its backward.

Layout [B, heads, L, D] with arbitrary strides (the partial modes of longrl.ops.block_attention arrive as
views). GQA: query head h reads key/value head h // (H // Hkv). All softmax math is float32.

Forward: one program per (query block, batch x head); online softmax over key blocks.
Backward (given the ring's *merged* out and lse, so P = exp(S - lse) is the final softmax):
  delta = rowsum(dout * out) in torch, then
  dk/dv: one program per (key block, batch x kv head), looping over the query heads of its group and over the
         query blocks, so the GQA sum happens in registers (no atomics, no per-head copies);
  dq:    one program per (query block, batch x head), looping over key blocks.

Operand precision: on the GPU, fp16/bf16 tiles go into tl.dot as they are (tensor cores, fp32 accumulate) and
fp32 tiles use exact "ieee" dots (no TF32). Under TRITON_INTERPRET=1 every tile is converted to fp32 on load,
because the interpreter's bf16 arithmetic is wrong.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from longrl.kernels._interpret import triton_interpreting


@triton.jit
def _load_tile(ptr, rows, cols, stride_r, stride_c, n_rows, n_cols, UPCAST: tl.constexpr):
    """[len(rows), len(cols)] tile at ptr + rows*stride_r + cols*stride_c, zero outside [n_rows, n_cols]."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tile = tl.load(
        ptr + rows[:, None].to(tl.int64) * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0
    )
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _recompute_probs(
    q, k, lse, rows, cols, row_live, len_k, scale, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr
):
    """P = exp(q k^T * scale - lse) of a [rows, cols] tile, as the forward saw it (both backward kernels need
    it); 0 where a key is out of range or causally hidden, and on rows that are not live (out of range, or
    lse = -inf: no key seen, no gradient; exp(s - (-inf)) would be inf)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    visible = row_live[:, None] & (cols < len_k)[None, :]
    if CAUSAL:
        visible = visible & (cols[None, :] <= rows[:, None])
    return tl.where(visible, tl.exp(s - lse[:, None]), 0.0)


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om, s_od,
    s_lb, s_lh, s_lm,
    heads, group, len_q, len_k, dim, scale,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    hk = h // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(q_ptr + b * s_qb + h * s_qh, rows, offs_d, s_qm, s_qd, len_q, dim, UPCAST)
    k_base = k_ptr + b * s_kb + hk * s_kh
    v_base = v_ptr + b * s_vb + hk * s_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    stop = len_k
    if CAUSAL:  # keys after this block's last query are invisible to all of it
        stop = tl.minimum(len_k, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, stop, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_base, cols, offs_d, s_kn, s_kd, len_k, dim, UPCAST)
        v = _load_tile(v_base, cols, offs_d, s_vn, s_vd, len_k, dim, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        visible = (cols < len_k)[None, :] & (rows < len_q)[:, None]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with no visible key so far keeps m = -inf; shift by 0 then so exp() gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_shift)
        p = tl.exp(s - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, m_i + tl.log(l_safe), float("-inf"))
    out_mask = (rows < len_q)[:, None] & (offs_d < dim)[None, :]
    out_offs = b * s_ob + h * s_oh + rows[:, None].to(tl.int64) * s_om + offs_d[None, :] * s_od
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    tl.store(lse_ptr + b * s_lb + h * s_lh + rows * s_lm, lse, mask=rows < len_q)


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om, s_od,
    s_dkb, s_dkh, s_dkn, s_dkd,
    s_dvb, s_dvh, s_dvn, s_dvd,
    kv_heads, group, len_q, len_k, dim, scale,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # lse and delta are contiguous [B, H, len_q] float32; do (dout) has the strides s_o*.
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = (bhk // kv_heads).to(tl.int64)
    hk = (bhk % kv_heads).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(k_ptr + b * s_kb + hk * s_kh, cols, offs_d, s_kn, s_kd, len_k, dim, UPCAST)
    v = _load_tile(v_ptr + b * s_vb + hk * s_vh, cols, offs_d, s_vn, s_vd, len_k, dim, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    start = 0
    if CAUSAL:  # queries before this block's first key see none of it
        start = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for g in range(0, group):
        h = hk * group + g
        q_base = q_ptr + b * s_qb + h * s_qh
        do_base = do_ptr + b * s_ob + h * s_oh
        row_base = (b * kv_heads * group + h) * len_q
        for start_m in range(start, len_q, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < len_q
            q = _load_tile(q_base, rows, offs_d, s_qm, s_qd, len_q, dim, UPCAST)
            do = _load_tile(do_base, rows, offs_d, s_om, s_od, len_q, dim, UPCAST)
            lse = tl.load(lse_ptr + row_base + rows, mask=row_ok, other=0.0)
            delta = tl.load(delta_ptr + row_base + rows, mask=row_ok, other=0.0)
            row_live = row_ok & (lse != float("-inf"))
            p = _recompute_probs(q, k, lse, rows, cols, row_live, len_k, scale, CAUSAL, DOT_PRECISION)
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PRECISION)
    dk = dk * scale
    mask = (cols < len_k)[:, None] & (offs_d < dim)[None, :]
    dk_offs = b * s_dkb + hk * s_dkh + cols[:, None].to(tl.int64) * s_dkn + offs_d[None, :] * s_dkd
    dv_offs = b * s_dvb + hk * s_dvh + cols[:, None].to(tl.int64) * s_dvn + offs_d[None, :] * s_dvd
    tl.store(dk_ptr + dk_offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + dv_offs, dv.to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om, s_od,
    s_dqb, s_dqh, s_dqm, s_dqd,
    heads, group, len_q, len_k, dim, scale,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    hk = h // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < len_q
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(q_ptr + b * s_qb + h * s_qh, rows, offs_d, s_qm, s_qd, len_q, dim, UPCAST)
    do = _load_tile(do_ptr + b * s_ob + h * s_oh, rows, offs_d, s_om, s_od, len_q, dim, UPCAST)
    row_base = (b * heads + h) * len_q
    lse = tl.load(lse_ptr + row_base + rows, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + row_base + rows, mask=row_ok, other=0.0)
    row_live = row_ok & (lse != float("-inf"))
    k_base = k_ptr + b * s_kb + hk * s_kh
    v_base = v_ptr + b * s_vb + hk * s_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    stop = len_k
    if CAUSAL:
        stop = tl.minimum(len_k, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, stop, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_base, cols, offs_d, s_kn, s_kd, len_k, dim, UPCAST)
        v = _load_tile(v_base, cols, offs_d, s_vn, s_vd, len_k, dim, UPCAST)
        p = _recompute_probs(q, k, lse, rows, cols, row_live, len_k, scale, CAUSAL, DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    dq = dq * scale
    mask = row_ok[:, None] & (offs_d < dim)[None, :]
    dq_offs = b * s_dqb + h * s_dqh + rows[:, None].to(tl.int64) * s_dqm + offs_d[None, :] * s_dqd
    tl.store(dq_ptr + dq_offs, dq.to(dq_ptr.dtype.element_ty), mask=mask)


def _config(t: torch.Tensor, block_m: int | None, block_n: int | None) -> dict:
    """Launch constants: tile sizes (>= 16 for tl.dot), operand precision and warps."""
    upcast = t.dtype == torch.float32 or triton_interpreting() or not t.is_cuda
    dim = t.shape[-1]
    block_d = max(16, triton.next_power_of_2(dim))
    if block_m is None or block_n is None:
        # Small tiles in the interpreter (tests then cross several blocks); 64x64 on the GPU (32 when the
        # fp32 tiles of a wide head would spill registers).
        default = 16 if triton_interpreting() else (32 if upcast and block_d > 64 else 64)
        block_m = block_m or default
        block_n = block_n or default
    return {
        "UPCAST": upcast,
        # Exact fp32 dots (Triton's default for fp32 is TF32); fp16/bf16 operands keep tl.dot's default.
        "DOT_PRECISION": "ieee" if upcast else None,
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_D": block_d,
        "num_warps": 4 if block_d <= 64 else 8,
        # fp32 tiles are twice the bytes: fewer pipeline stages keep shared memory under ~100 KB (sm_86/89).
        "num_stages": 2 if upcast else 3,
    }


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out [B, H, Lq, D] (q's dtype) and lse [B, H, Lq] float32 of q [B, H, Lq, D] against k, v [B, Hkv, Lk, D].

    Any strides. `out`/`lse` may be given (preallocated, any strides) and are fully written. causal assumes
    Lq == Lk at the same positions.
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if out is None:
        out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(b, h, lq, dtype=torch.float32, device=q.device)
    cfg = _config(q, block_m, block_n)
    grid = (triton.cdiv(lq, cfg["BLOCK_M"]), b * h)
    _fwd_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        h, h // hkv, lq, lk, d, scale,
        CAUSAL=causal, **cfg,
    )  # fmt: skip
    return out, lse


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> None:
    """Write dq [B, H, Lq, D], dk/dv [B, Hkv, Lk, D] (any strides, any float dtype; fully overwritten).

    dout/out [B, H, Lq, D] any float dtype, lse [B, H, Lq] float32: the merged values of these query rows.
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    lse = lse.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    cfg = _config(q, block_m, block_n)
    if not cfg["UPCAST"] and dout.dtype != q.dtype:  # tl.dot needs matching fp16/bf16 operands
        dout = dout.to(q.dtype)
    common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    _bwd_dkdv_kernel[(triton.cdiv(lk, cfg["BLOCK_N"]), b * hkv)](
        q, k, v, dout, lse, delta, dk, dv,
        *common, *dk.stride(), *dv.stride(),
        hkv, h // hkv, lq, lk, d, scale,
        CAUSAL=causal, **cfg,
    )  # fmt: skip
    _bwd_dq_kernel[(triton.cdiv(lq, cfg["BLOCK_M"]), b * h)](
        q, k, v, dout, lse, delta, dq,
        *common, *dq.stride(),
        h, h // hkv, lq, lk, d, scale,
        CAUSAL=causal, **cfg,
    )  # fmt: skip
