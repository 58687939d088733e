"""Block attention (one query block x one key/value block, returning the LSE) and its backward.

The per-step compute of ring attention; see longrl.ops.block_attention for the public contract. Backends:
  "aten"   CPU: aten._scaled_dot_product_flash_attention_for_cpu and its backward op (both take the LSE, so
           the backward runs with the merged out/lse directly; GQA is native). The backward op returns its
           input dtype, so grad_dtype=float32 on fp16/bf16 inputs runs it on float32 copies of the inputs.
           CUDA: forward with aten flash attention (fp16/bf16, head dim a multiple of 8 up to 256) or memory
           efficient attention (otherwise); backward with the chunked torch math below (the CUDA flash/efficient
           backward ops want their forward's internal state, which a ring's merged out/lse never had).
  "triton" longrl.kernels.block_attention: flash-style forward and backward kernels (GQA and the partial modes
           by indexing, no copies of q/k/v).
  "torch"  the same math as the reference, chunked over query rows so no [Lq, Lk] matrix is held whole.
`reference_forward` / `reference_backward` are the unchunked oracle the tests compare everything against.
"""

from __future__ import annotations

import torch

MODES = ("full", "causal", "kv_first_half", "q_second_half")

# Backends "auto" tries, best first. CPU: the fused aten kernel, then torch math; Triton runs on CPU only under
# TRITON_INTERPRET=1 (tests name it explicitly, "auto" never reaches it because "torch" always works).
# CUDA: Triton first. It covers forward *and* backward with the ring's merged (fp32) out/lse in one fused
# kernel each, handles GQA and the partial modes without copying K/V, and is the path the CPU tests exercise
# (under the interpreter). The "aten" forward (FlashAttention-2) is probably faster, but its backward here is
# chunked torch math, so per ring step it likely loses; `longrl bench kernels` measures both — reorder these
# if a GPU run shows "aten" ahead.
PREFERENCES: dict[str, tuple[str, ...]] = {
    "cpu": ("aten", "torch", "triton"),
    "cuda": ("triton", "aten", "torch"),
}

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Query rows per chunk in the torch math path: bounds the fp32 score matrix to B*H*_CHUNK*Lk elements.
_QUERY_CHUNK = 1024


def check_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str) -> None:
    """Validate block_attention inputs; raise ValueError naming the problem."""
    if mode not in MODES:
        raise ValueError(f"block_attention: mode must be one of {MODES}, got {mode!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(
                f"block_attention: {name} must be 4-D [B, heads, L, D], got shape {tuple(t.shape)}"
            )
        if t.dtype not in _DTYPES:
            raise ValueError(f"block_attention: {name} must be float32/float16/bfloat16, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"block_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"block_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"block_attention: k and v must have one shape, got {tuple(k.shape)} / {tuple(v.shape)}"
        )
    b, h, lq, d = q.shape
    bk, hkv, lk, dk = k.shape
    if bk != b or dk != d:
        raise ValueError(
            f"block_attention: q [B, H, Lq, D] = {tuple(q.shape)} and k [B, Hkv, Lk, D] = {tuple(k.shape)} "
            "must agree on B and D"
        )
    if d == 0:
        raise ValueError("block_attention: head dim D must be at least 1")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"block_attention: query heads ({h}) must be a multiple of key/value heads ({hkv})")
    if mode == "causal" and lq != lk:
        raise ValueError(f"block_attention: mode 'causal' needs Lq == Lk, got Lq={lq}, Lk={lk}")


def check_backward_args(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, mode: str
) -> None:
    """Validate the extra block_attention_backward inputs (dout/out [B, H, Lq', D], lse [B, H, Lq'] fp32)."""
    rows_shape = (*q.shape[:2], query_rows(mode, q.shape[2]))
    for name, t in (("dout", dout), ("out", out)):
        if tuple(t.shape) != (*rows_shape, q.shape[3]):
            raise ValueError(
                f"block_attention_backward: {name} must be {(*rows_shape, q.shape[3])} for mode {mode!r}, "
                f"got {tuple(t.shape)}"
            )
        if t.dtype not in _DTYPES:
            raise ValueError(
                f"block_attention_backward: {name} must be float32/float16/bfloat16, got {t.dtype}"
            )
    if tuple(lse.shape) != rows_shape or lse.dtype != torch.float32:
        raise ValueError(
            f"block_attention_backward: lse must be float32 {rows_shape}, got {lse.dtype} {tuple(lse.shape)}"
        )
    if not all(t.device == q.device for t in (dout, out, lse)):
        raise ValueError("block_attention_backward: dout, out, lse must be on q's device")


def query_rows(mode: str, lq: int) -> int:
    """Number of query rows `mode` computes (Lq' in the docs)."""
    return lq // 2 if mode == "q_second_half" else lq


def mode_views(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """The (q, k, v) slices a mode computes on (views, no copies) and whether they are causal among themselves."""
    if mode == "kv_first_half":
        half = k.shape[2] // 2
        return q, k[:, :, :half], v[:, :, :half], False
    if mode == "q_second_half":
        lq = q.shape[2]
        return q[:, :, lq - lq // 2 :], k, v, False
    return q, k, v, mode == "causal"


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


# ----------------------------------------------------------------------------------------------------------
# reference (the oracle): unchunked, explicit masks, GQA by repeat_interleave
# ----------------------------------------------------------------------------------------------------------


def visible_mask(mode: str, lq: int, lk: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool [Lq', Lk]: which keys each computed query row sees (rows = the mode's query rows, in order)."""
    rows = torch.arange(lq, device=device)[:, None]
    cols = torch.arange(lk, device=device)[None, :]
    if mode == "full":
        mask = torch.ones(lq, lk, dtype=torch.bool, device=device)
    elif mode == "causal":
        mask = cols <= rows
    elif mode == "kv_first_half":
        mask = (cols < lk // 2).expand(lq, lk)
    elif mode == "q_second_half":
        mask = torch.ones(lq, lk, dtype=torch.bool, device=device)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return mask[lq - query_rows(mode, lq) :]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _repeat_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def reference_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain math: out [B, H, Lq', D] and lse [B, H, Lq'] in float32 (float64 for float64 inputs).

    Differentiable by autograd (used for gradchecks). Rows with no visible key get out 0 and lse -inf.
    """
    dt = _compute_dtype(q)
    scale = _scale(q, scale)
    lq, lk = q.shape[2], k.shape[2]
    rows = lq - query_rows(mode, lq)
    qf = q[:, :, rows:].to(dt)
    kf = _repeat_kv(k.to(dt), q.shape[1])
    vf = _repeat_kv(v.to(dt), q.shape[1])
    mask = visible_mask(mode, lq, lk, q.device)
    scores = (qf @ kf.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - torch.where(empty, torch.zeros_like(lse), lse)[..., None])
    return probs @ vf, lse


def reference_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mode: str,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-math gradients given (possibly merged) out/lse: dq/dk/dv in float32 (float64 for float64 q).

    P = exp(S - lse) on visible keys, dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
    dQ = scale dS K, dK = scale dS^T Q; GQA gradients summed over each group of query heads.
    """
    dt = _compute_dtype(q)
    scale = _scale(q, scale)
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    rows = lq - query_rows(mode, lq)
    qf = q[:, :, rows:].to(dt)
    kf = _repeat_kv(k.to(dt), h)
    vf = _repeat_kv(v.to(dt), h)
    do = dout.to(dt)
    lse = lse.to(dt)
    mask = visible_mask(mode, lq, lk, q.device) & ~torch.isneginf(lse)[..., None]
    scores = qf @ kf.transpose(-1, -2) * scale
    probs = torch.where(mask, torch.exp(scores - lse[..., None]), torch.zeros_like(scores))
    delta = (do * out.to(dt)).sum(-1, keepdim=True)
    ds = probs * (do @ vf.transpose(-1, -2) - delta)
    dq = torch.zeros(b, h, lq, d, dtype=dt, device=q.device)
    dq[:, :, rows:] = ds @ kf * scale
    dk = (ds.transpose(-1, -2) @ qf * scale).view(b, hkv, h // hkv, lk, d).sum(2)
    dv = (probs.transpose(-1, -2) @ do).view(b, hkv, h // hkv, lk, d).sum(2)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------------
# "torch" backend: the same math in float32, chunked over query rows, GQA by broadcasting (no K/V copies)
# ----------------------------------------------------------------------------------------------------------


def _grouped(t: torch.Tensor, hkv: int) -> torch.Tensor:
    """[B, H, L, ...] -> [B, Hkv, H // Hkv, L, ...] (query head h belongs to kv head h // (H // Hkv))."""
    return t.reshape(t.shape[0], hkv, t.shape[1] // hkv, *t.shape[2:])


def _flat_rows(t: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, G, rows, ...] -> float32 [B, Hkv, G * rows, ...]: one batched matmul against the shared K/V."""
    return t.float().reshape(t.shape[0], t.shape[1], t.shape[2] * t.shape[3], *t.shape[4:])


def _chunk_scores(
    q_rows: torch.Tensor, k32: torch.Tensor, start: int, groups: int, causal: bool, scale: float
) -> torch.Tensor:
    """fp32 scores [B, Hkv, G * rows, Lk] of query rows start.. (flattened by _flat_rows), causal-masked."""
    scores = q_rows @ k32.transpose(-1, -2) * scale
    if causal:
        n = q_rows.shape[2] // groups
        rows = torch.arange(start, start + n, device=q_rows.device).repeat(groups)[:, None]
        cols = torch.arange(k32.shape[2], device=q_rows.device)[None, :]
        scores = scores.masked_fill(cols > rows, float("-inf"))
    return scores


def torch_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward on already-sliced views (see mode_views): out in q's dtype, lse float32."""
    b, h, lq, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    out = torch.empty(b, h, lq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, lq, dtype=torch.float32, device=q.device)
    k32, v32 = k.float(), v.float()
    out5, lse5, q5 = _grouped(out, hkv), _grouped(lse, hkv), _grouped(q, hkv)
    for start in range(0, lq, _QUERY_CHUNK):
        stop = min(start + _QUERY_CHUNK, lq)
        scores = _chunk_scores(_flat_rows(q5[:, :, :, start:stop]), k32, start, g, causal, scale)
        chunk_lse = torch.logsumexp(scores, dim=-1)
        safe = torch.where(torch.isneginf(chunk_lse), torch.zeros_like(chunk_lse), chunk_lse)
        chunk_out = torch.exp(scores - safe[..., None]) @ v32
        out5[:, :, :, start:stop] = chunk_out.view(b, hkv, g, stop - start, d)
        lse5[:, :, :, start:stop] = chunk_lse.view(b, hkv, g, stop - start)
    return out, lse


def torch_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward on already-sliced views: (dq, dk, dv) float32 shaped like the views."""
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv
    k32, v32 = k.float(), v.float()
    dq = torch.empty(b, h, lq, d, dtype=torch.float32, device=q.device)
    dk = torch.zeros(b, hkv, lk, d, dtype=torch.float32, device=q.device)
    dv = torch.zeros_like(dk)
    q5, do5, dq5 = _grouped(q, hkv), _grouped(dout, hkv), _grouped(dq, hkv)
    lse5 = _grouped(lse, hkv)
    delta5 = _grouped((dout.float() * out.float()).sum(-1), hkv)
    for start in range(0, lq, _QUERY_CHUNK):
        stop = min(start + _QUERY_CHUNK, lq)
        qc, doc = _flat_rows(q5[:, :, :, start:stop]), _flat_rows(do5[:, :, :, start:stop])
        chunk_lse = _flat_rows(lse5[:, :, :, start:stop])[..., None]
        delta = _flat_rows(delta5[:, :, :, start:stop])[..., None]
        scores = _chunk_scores(qc, k32, start, g, causal, scale)
        # A row that saw no key anywhere (lse = -inf) has no gradient; exp(s - (-inf)) would be inf.
        probs = torch.where(torch.isneginf(chunk_lse), 0.0, torch.exp(scores - chunk_lse))
        ds = probs * (doc @ v32.transpose(-1, -2) - delta)
        dq5[:, :, :, start:stop] = (ds @ k32 * scale).view(b, hkv, g, stop - start, d)
        dk += ds.transpose(-1, -2) @ qc * scale
        dv += probs.transpose(-1, -2) @ doc
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------------
# "aten" backend
# ----------------------------------------------------------------------------------------------------------


def _unit_last_stride(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The aten kernels read rows as dense vectors: the CPU flash kernel silently returns garbage for a head dim
    with stride != 1 (seen with torch 2.13), the CUDA ones reject it. Copy only those tensors."""
    return [t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous() for t in tensors]


def _aten_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _unit_last_stride(q, k, v)
    if not q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, scale=scale
        )
        return out, lse
    d = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0 and d <= 256:
        # FlashAttention-2 handles Hkv dividing H natively; its lse is [B, H, Lq] fp32, natural log.
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return res[0], res[1]
    if d % (16 // q.element_size()) != 0:  # rows not 16-byte multiples: no aten kernel we trust here
        return torch_forward(q, k, v, causal, scale)
    # Memory-efficient attention: equal head counts only; its lse is padded along Lq (to a multiple of 32).
    if k.shape[1] != q.shape[1]:
        k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale
    )
    return out, lse[:, :, : q.shape[2]].contiguous()


def _aten_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    fp32_grads: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of the sliced views: float32 on CUDA; on CPU in the kernel's dtype (q's, or float32 when
    fp32_grads)."""
    if q.is_cuda:
        return torch_backward(dout, q, k, v, out, lse, causal, scale)
    if fp32_grads and q.dtype != torch.float32:
        # The CPU kernel returns gradients in its input dtype, rounded from its internal fp32 sums; upcasting
        # that result would not bring the lost bits back. Run the kernel in float32 on upcast copies instead
        # (exact: every fp16/bf16 value is a float32 value), at the cost of those copies.
        q, k, v, dout, out = (t.float() for t in (q, k, v, dout, out))
    # The CPU flash backward recomputes P from the lse it is given and D = rowsum(dout * out): exact for the
    # merged values. It wants dout/out in q's dtype (for fp16/bf16 the merged fp32 out is rounded, as in any
    # flash backward that keeps out in the model dtype).
    dout, q, k, v, out = _unit_last_stride(dout.to(q.dtype), q, k, v, out.to(q.dtype))
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        dout, q, k, v, out, lse.contiguous(), 0.0, causal, scale=scale
    )


# ----------------------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------------------


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str, scale: float | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """block_attention on `backend`: out [B, H, Lq', D] in q's dtype, lse [B, H, Lq'] float32."""
    scale = _scale(q, scale)
    qv, kv, vv, causal = mode_views(q, k, v, mode)
    if qv.numel() == 0 or kv.numel() == 0:  # nothing to attend (some aten kernels crash on empty keys)
        out = torch.zeros(qv.shape, dtype=q.dtype, device=q.device)
        return out, torch.full(qv.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    if backend == "triton":
        from longrl.kernels.block_attention import attention_forward

        return attention_forward(qv, kv, vv, causal, scale)
    if backend == "aten":
        return _aten_forward(qv, kv, vv, causal, scale)
    return torch_forward(qv, kv, vv, causal, scale)


def backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mode: str,
    scale: float | None,
    backend: str,
    *,
    grad_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """block_attention_backward on `backend`: dq, dk, dv shaped like q, k, v (zeros outside mode), in
    `grad_dtype` (None: q's dtype; float32: the fp32 sums, never rounded to fp16/bf16 on the way)."""
    check_backward_args(dout, q, k, out, lse, mode)
    if grad_dtype is None:
        grad_dtype = q.dtype
    if grad_dtype not in (q.dtype, torch.float32):
        raise ValueError(
            f"block_attention_backward: grad_dtype must be None, torch.float32 or q's dtype ({q.dtype}), "
            f"got {grad_dtype}"
        )
    scale = _scale(q, scale)
    # Triton stores its fp32 tile sums straight into these (converting once, to grad_dtype); the torch math
    # returns fp32 and is copied in, so for grad_dtype float32 nothing is rounded.
    dq = torch.zeros_like(q, dtype=grad_dtype, memory_format=torch.contiguous_format)
    dk = torch.zeros_like(k, dtype=grad_dtype, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, dtype=grad_dtype, memory_format=torch.contiguous_format)
    qv, kv, vv, causal = mode_views(q, k, v, mode)
    dqv, dkv, dvv, _ = mode_views(dq, dk, dv, mode)
    if qv.numel() == 0 or kv.numel() == 0:
        return dq, dk, dv
    if backend == "triton":
        from longrl.kernels.block_attention import attention_backward

        attention_backward(dout, qv, kv, vv, out, lse, causal, scale, dqv, dkv, dvv)
        return dq, dk, dv
    if backend == "aten":
        grads = _aten_backward(dout, qv, kv, vv, out, lse, causal, scale, grad_dtype == torch.float32)
    else:
        grads = torch_backward(dout, qv, kv, vv, out, lse, causal, scale)
    for dst, src in zip((dqv, dkv, dvv), grads, strict=True):
        dst.copy_(src)
    return dq, dk, dv
