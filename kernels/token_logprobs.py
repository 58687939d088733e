"""Triton kernels for fused token logprobs (+ entropy); see longrl.ops.token_logprobs.

From hidden states (logits = hidden @ weight.T + bias, never stored):
  forward   `_hidden_fwd_kernel`: a program owns BLOCK_T rows and one slice of the vocabulary; it walks its
            slice in BLOCK_V tiles, each tile's logits built by tl.dot over H in BLOCK_H steps (fp32
            accumulation), and keeps per-row online statistics: running max m, sum of exp(z - m), sum of
            exp(z - m) * (z - m) (for the entropy) and the label's logit. Splitting the vocabulary over
            several programs keeps the GPU busy when T is small; `_combine` merges the slices' statistics
            (O(T) work).
  backward  `_hidden_dlogits_kernel`: for one [rows, vocab chunk] block it recomputes the logits tile by tile
            with tl.dot and turns them into d(loss)/d(logits) in the same kernel (never a float32 logits
            buffer); the caller then runs two cuBLAS/CPU matmuls per block (dhidden += dlogits @ W_c,
            dW_c += dlogits.T @ hidden). A fused dhidden accumulation would need a [BLOCK_T, H] accumulator
            per program (too large for registers at H = 3584) or atomics; the matmuls are already optimal.
From logits: `_logits_fwd_kernel` / `_logits_bwd_kernel`, one row per program, online softmax over V.

Math is float32 throughout (fp16/bf16 are loaded and converted); z = logits / temperature:
  lse = m + log(s),  logp(label) = z_label - lse,  entropy = log(s) - a / s  with s, a relative to m.
  d/dz_k: g_lp * (onehot_k - p_k) - g_ent * p_k * (log p_k + entropy), then divided by the temperature.
Logits of -inf (e.g. a bias masking tokens) are allowed as long as every row has one finite logit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from longrl.kernels._interpret import triton_interpreting

_alloc = torch.empty  # every output goes through here (tests swap in a poisoning allocator)


def _interpreted_bf16(t: torch.Tensor) -> bool:
    """bf16 under the interpreter, whose bf16 arithmetic and fp32 -> bf16 stores differ from torch's: the
    kernels then load as fp32 (UPCAST) and store into an fp32 buffer the caller converts."""
    return triton_interpreting() and t.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------
# shared device helpers
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _online_update(m, s, a, z, WANT_ENTROPY: tl.constexpr):
    """Fold a [rows, cols] tile of z into the running per-row (m, s, a) and return the new ones."""
    m_new = tl.maximum(m, tl.max(z, axis=1))
    # A row that has seen only -inf so far keeps m = -inf; shift by 0 then so exp() gives 0, not NaN.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - shift)
    d = z - shift[:, None]
    e = tl.exp(d)
    if WANT_ENTROPY:
        # a is relative to the old max: sum e^(z-m_new)(z-m_new) = scale * (a + (m - m_new) * s).
        corr = tl.where(s > 0, m - shift, 0.0) * s
        # e * (z - m) -> 0 where e == 0 (a -inf logit; 0 * -inf would be NaN)
        a = scale * (a + corr) + tl.sum(e * tl.where(e > 0, d, 0.0), axis=1)
    s = scale * s + tl.sum(e, axis=1)
    return m_new, s, a


@triton.jit
def _grad_tile(z, lse, ent, g_lp, g_ent, hit, inv_temp, HAS_G_LP: tl.constexpr, HAS_G_ENT: tl.constexpr):
    """d(loss)/d(logits) for a [rows, cols] tile of z = logits / temperature (float32)."""
    logp = z - lse[:, None]
    p = tl.exp(logp)
    dz = tl.zeros(z.shape, dtype=tl.float32)
    if HAS_G_LP:
        dz = g_lp[:, None] * (tl.where(hit, 1.0, 0.0) - p)
    if HAS_G_ENT:
        # dH/dz_k = -p_k (log p_k + H); p_k = 0 (a -inf logit) contributes nothing.
        dz = dz - g_ent[:, None] * p * (tl.where(p > 0, logp, 0.0) + ent[:, None])
    return dz * inv_temp


# ----------------------------------------------------------------------------------------------------------
# from hidden states: forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, T, V, H, stride_ht, stride_hh, stride_wv, stride_wh, row0, col0,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """hidden[row0:+BLOCK_T] @ weight[col0:+BLOCK_V].T as a float32 tile (zeros outside the tensors)."""
    rows = row0 + tl.arange(0, BLOCK_T)
    cols = col0 + tl.arange(0, BLOCK_V)
    ks = tl.arange(0, BLOCK_H)
    row_ok = rows[:, None] < T
    col_ok = cols[:, None] < V
    # Launch-time specialization turns a unit stride into a constant, so these loads vectorize.
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_ht + ks[None, :] * stride_hh
    w_ptrs = w_ptr + cols.to(tl.int64)[:, None] * stride_wv + ks[None, :] * stride_wh
    acc = tl.zeros([BLOCK_T, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k_ok = (k0 + ks)[None, :] < H
        h = tl.load(h_ptrs, mask=row_ok & k_ok, other=0.0)
        w = tl.load(w_ptrs, mask=col_ok & k_ok, other=0.0)
        if UPCAST:  # the interpreter's bf16 dot is wrong: multiply in fp32 there
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:  # fp32 inputs: full-precision products, not TF32
            acc = tl.dot(h, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, tl.trans(w), acc)
        h_ptrs += BLOCK_H * stride_hh
        w_ptrs += BLOCK_H * stride_wh
    return acc


@triton.jit
def _hidden_fwd_kernel(
    h_ptr, w_ptr, b_ptr, labels_ptr, m_ptr, s_ptr, a_ptr, zl_ptr,
    T, V, H, stride_ht, stride_hh, stride_wv, stride_wh, inv_temp, num_splits,
    HAS_BIAS: tl.constexpr, WANT_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    # int32 labels: an int64 [BLOCK_T, BLOCK_V] compare would double the epilogue's registers.
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int32)

    # This program's vocabulary slice, a whole number of BLOCK_V tiles.
    split_len = tl.cdiv(tl.cdiv(V, BLOCK_V), num_splits) * BLOCK_V
    v_begin = split * split_len
    v_end = tl.minimum(V, v_begin + split_len)

    m = tl.full([BLOCK_T], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_T], dtype=tl.float32)
    a = tl.zeros([BLOCK_T], dtype=tl.float32)
    zl = tl.zeros([BLOCK_T], dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        acc = _logits_tile(
            h_ptr, w_ptr, T, V, H, stride_ht, stride_hh, stride_wv, stride_wh, pid_t * BLOCK_T, v0,
            UPCAST, IEEE, BLOCK_T, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        z = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
        hit = cols[None, :] == label[:, None]
        zl += tl.sum(tl.where(hit, z, 0.0), axis=1)
        m, s, a = _online_update(m, s, a, z, WANT_ENTROPY)

    out = split * T + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(a_ptr + out, a, mask=row_ok)
    tl.store(zl_ptr + out, zl, mask=row_ok)


def _combine(
    m: torch.Tensor, s: torch.Tensor, a: torch.Tensor, zl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-slice statistics [splits, T] into (logp of the label, entropy, lse), each float32 [T]."""
    big_m = m.amax(0)
    shift = torch.where(torch.isneginf(big_m), torch.zeros_like(big_m), big_m)
    scale = torch.exp(m - shift)
    total_s = (scale * s).sum(0)
    corr = torch.where(s > 0, (m - shift) * s, torch.zeros_like(s))
    total_a = (scale * (a + corr)).sum(0)
    log_s = torch.log(total_s)
    lse = shift + log_s
    # Only the slice holding the label adds a non-zero zl (the others add 0).
    return zl.sum(0) - lse, log_s - total_a / total_s, lse


def _cfg(block_t: int, block_v: int, block_h: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_T": block_t, "BLOCK_V": block_v, "BLOCK_H": block_h}, num_warps=warps, num_stages=stages
    )


# GPU tiles (autotuned per (V, H) and dtype; all compile for sm_80/sm_90 without register spills).
# The interpreter gets one small fixed tile instead (autotuning there would only multiply the run time).
_TILES = [
    _cfg(64, 128, 64, 4, 3),
    _cfg(64, 128, 64, 8, 3),
    _cfg(128, 128, 64, 8, 3),
    _cfg(64, 256, 64, 8, 3),
    _cfg(128, 64, 64, 4, 4),
]
_INTERPRETER_TILE = {"BLOCK_T": 32, "BLOCK_V": 128, "BLOCK_H": 64}
_hidden_fwd_tuned = triton.autotune(_TILES, key=["V", "H"])(_hidden_fwd_kernel)


def default_num_splits(tokens: int, vocab: int, device: torch.device, block_t: int = 64) -> int:
    """Vocabulary slices for the forward: enough programs for about two waves over the GPU's SMs."""
    if device.type != "cuda":
        return 2 if vocab > 128 else 1  # interpreter: exercise the slice merge
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(max(tokens, 1), block_t)
    return max(1, min(triton.cdiv(2 * sms, row_blocks), triton.cdiv(vocab, 2048)))


def hidden_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    want_entropy: bool,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [T, H], weight [V, H], bias [V] or None (fp32/fp16/bf16, any strides), labels int64 [T].

    Returns float32 [T] each: logp of the label (meaningless where the label is outside [0, V); the caller
    zeroes ignored rows), entropy (undefined unless want_entropy) and lse of z = logits / temperature.
    """
    tokens, hid = hidden.shape
    vocab = weight.shape[0]
    splits = num_splits or default_num_splits(tokens, vocab, hidden.device)
    splits = max(1, min(splits, triton.cdiv(vocab, 64)))  # an empty slice would be harmless, just idle
    stats = _alloc(4, splits, tokens, dtype=torch.float32, device=hidden.device)
    args = (
        hidden, weight, bias if bias is not None else hidden, labels, stats[0], stats[1], stats[2], stats[3],
        tokens, vocab, hid, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        1.0 / temperature, splits,
    )  # fmt: skip
    flags = {
        "HAS_BIAS": bias is not None,
        "WANT_ENTROPY": want_entropy,
        "UPCAST": _interpreted_bf16(hidden),
        "IEEE": hidden.dtype == torch.float32,
    }
    if triton_interpreting():
        grid = (triton.cdiv(tokens, _INTERPRETER_TILE["BLOCK_T"]), splits)
        _hidden_fwd_kernel[grid](*args, **flags, **_INTERPRETER_TILE)
    else:
        _hidden_fwd_tuned[lambda meta: (triton.cdiv(tokens, meta["BLOCK_T"]), splits)](*args, **flags)
    return _combine(stats[0], stats[1], stats[2], stats[3])


# ----------------------------------------------------------------------------------------------------------
# from hidden states: backward (d logits of one [rows, vocab chunk] block)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _hidden_dlogits_kernel(
    h_ptr, w_ptr, b_ptr, labels_ptr, lse_ptr, ent_ptr, g_lp_ptr, g_ent_ptr, out_ptr,
    R, C, H, col_base, stride_ht, stride_hh, stride_wv, stride_wh, stride_or, inv_temp,
    HAS_BIAS: tl.constexpr, HAS_G_LP: tl.constexpr, HAS_G_ENT: tl.constexpr, UPCAST: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < R
    col_ok = cols < C
    acc = _logits_tile(
        h_ptr, w_ptr, R, C, H, stride_ht, stride_hh, stride_wv, stride_wh, tl.program_id(0) * BLOCK_T,
        tl.program_id(1) * BLOCK_V, UPCAST, IEEE, BLOCK_T, BLOCK_V, BLOCK_H,
    )  # fmt: skip
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    z = acc * inv_temp

    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int32)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)
    g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
    hit = (cols + col_base)[None, :] == label[:, None]
    dz = _grad_tile(z, lse, ent, g_lp, g_ent, hit, inv_temp, HAS_G_LP, HAS_G_ENT)
    offs = rows.to(tl.int64)[:, None] * stride_or + cols[None, :]
    tl.store(out_ptr + offs, dz.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_hidden_dlogits_tuned = triton.autotune(_TILES, key=["C", "H"])(_hidden_dlogits_kernel)


def hidden_dlogits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    col_base: int,
    lse: torch.Tensor,
    ent: torch.Tensor | None,
    g_lp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """d(loss)/d(logits) of one block: hidden [R, H] rows, weight [C, H] / bias [C] the vocabulary chunk
    starting at column `col_base`; labels int64 [R] (global ids), lse/ent/g_lp/g_ent float32 [R] (g_* with
    ignored rows already zeroed, None when absent). Returns [R, C] in hidden's dtype, contiguous."""
    rows, hid = hidden.shape
    cols = weight.shape[0]
    buf_dtype = torch.float32 if _interpreted_bf16(hidden) else hidden.dtype
    out = _alloc(rows, cols, dtype=buf_dtype, device=hidden.device)
    args = (
        hidden, weight, bias if bias is not None else hidden, labels, lse, ent if ent is not None else lse,
        g_lp if g_lp is not None else lse, g_ent if g_ent is not None else lse, out,
        rows, cols, hid, col_base, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        out.stride(0), 1.0 / temperature,
    )  # fmt: skip
    flags = {
        "HAS_BIAS": bias is not None,
        "HAS_G_LP": g_lp is not None,
        "HAS_G_ENT": g_ent is not None,
        "UPCAST": _interpreted_bf16(hidden),
        "IEEE": hidden.dtype == torch.float32,
    }
    if triton_interpreting():
        tile = _INTERPRETER_TILE
        grid = (triton.cdiv(rows, tile["BLOCK_T"]), triton.cdiv(cols, tile["BLOCK_V"]))
        _hidden_dlogits_kernel[grid](*args, **flags, **tile)
    else:
        _hidden_dlogits_tuned[
            lambda meta: (triton.cdiv(rows, meta["BLOCK_T"]), triton.cdiv(cols, meta["BLOCK_V"]))
        ](*args, **flags)
    return out.to(hidden.dtype)


# ----------------------------------------------------------------------------------------------------------
# from logits
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _logits_fwd_kernel(
    x_ptr, labels_ptr, lp_ptr, ent_ptr, lse_ptr, T, V, stride_xt, stride_xv, inv_temp,
    WANT_ENTROPY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < T
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int32)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xt
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_R], dtype=tl.float32)
    a = tl.zeros([BLOCK_R], dtype=tl.float32)
    zl = tl.zeros([BLOCK_R], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols < V)[None, :]
        x = tl.load(x_rows + cols.to(tl.int64)[None, :] * stride_xv, mask=mask, other=0.0).to(tl.float32)
        z = tl.where(mask, x * inv_temp, float("-inf"))
        zl += tl.sum(tl.where(cols[None, :] == label[:, None], z, 0.0), axis=1)
        m, s, a = _online_update(m, s, a, z, WANT_ENTROPY)
    s = tl.where(row_ok, s, 1.0)  # rows past T: keep log/divide finite (they are not stored)
    log_s = tl.log(s)
    lse = tl.where(m == float("-inf"), 0.0, m) + log_s
    tl.store(lp_ptr + rows, zl - lse, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if WANT_ENTROPY:
        tl.store(ent_ptr + rows, log_s - a / s, mask=row_ok)


@triton.jit
def _logits_bwd_kernel(
    x_ptr, labels_ptr, lse_ptr, ent_ptr, g_lp_ptr, g_ent_ptr, out_ptr, T, V, stride_xt, stride_xv, inv_temp,
    HAS_G_LP: tl.constexpr, HAS_G_ENT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < T
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1).to(tl.int32)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(g_lp_ptr + rows, mask=row_ok, other=0.0)
    g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xt
    out_rows = out_ptr + rows.to(tl.int64)[:, None] * V
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols < V)[None, :]
        x = tl.load(x_rows + cols.to(tl.int64)[None, :] * stride_xv, mask=mask, other=0.0).to(tl.float32)
        hit = cols[None, :] == label[:, None]
        dz = _grad_tile(x * inv_temp, lse, ent, g_lp, g_ent, hit, inv_temp, HAS_G_LP, HAS_G_ENT)
        tl.store(out_rows + cols[None, :], dz.to(out_ptr.dtype.element_ty), mask=mask)


def _logits_block(vocab: int) -> dict:
    """A row per program on the GPU (V is large: one row streams through a 4096-wide tile); the interpreter
    takes 16 rows per program, since its cost is per operation, not per element."""
    if triton_interpreting():
        return {"BLOCK_R": 16, "BLOCK_V": min(1024, triton.next_power_of_2(vocab))}
    block = min(4096, triton.next_power_of_2(vocab))
    return {"BLOCK_R": 1, "BLOCK_V": block, "num_warps": 8 if block >= 2048 else 4}


def logits_forward(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, want_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [T, V] fp32/fp16/bf16 (any strides), labels int64 [T] -> float32 [T] logp, entropy, lse."""
    tokens, vocab = logits.shape
    lp = _alloc(tokens, dtype=torch.float32, device=logits.device)
    lse = _alloc(tokens, dtype=torch.float32, device=logits.device)
    ent = _alloc(tokens if want_entropy else 0, dtype=torch.float32, device=logits.device)
    if tokens == 0:
        return lp, ent, lse
    block = _logits_block(vocab)
    _logits_fwd_kernel[(triton.cdiv(tokens, block["BLOCK_R"]),)](
        logits, labels, lp, ent, lse, tokens, vocab, logits.stride(0), logits.stride(1), 1.0 / temperature,
        WANT_ENTROPY=want_entropy, **block,
    )  # fmt: skip
    return lp, ent, lse


def logits_backward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor | None,
    g_lp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """d(loss)/d(logits) [T, V] contiguous in logits' dtype (g_* float32 [T] with ignored rows zeroed)."""
    tokens, vocab = logits.shape
    buf_dtype = torch.float32 if _interpreted_bf16(logits) else logits.dtype
    out = _alloc(tokens, vocab, dtype=buf_dtype, device=logits.device)
    if tokens == 0:
        return out.to(logits.dtype)
    if g_ent is not None and ent is None:
        raise ValueError("logits_backward: an entropy gradient needs the forward's entropy")
    block = _logits_block(vocab)
    _logits_bwd_kernel[(triton.cdiv(tokens, block["BLOCK_R"]),)](
        logits, labels, lse, ent if ent is not None else lse, g_lp if g_lp is not None else lse,
        g_ent if g_ent is not None else lse, out, tokens, vocab, logits.stride(0), logits.stride(1),
        1.0 / temperature, HAS_G_LP=g_lp is not None, HAS_G_ENT=g_ent is not None, **block,
    )  # fmt: skip
    return out.to(logits.dtype)
