"""block_attention / block_attention_backward: every backend and mode against the plain-math reference, and the
zigzag ring composition (blocks merged with lse_merge) against full causal attention.

References: longrl._ops.attention.reference_forward / reference_backward (unchunked fp32/fp64 math with explicit
masks and GQA by repeat_interleave), themselves checked by float64 gradcheck / autograd; the ring tests compare
against autograd through full attention on the unsharded sequence.
Tolerances (kernel vs fp32 reference on the same inputs): fp32 1e-5 (atol and rtol), fp16 2e-3 forward /
5e-3 gradients, bf16 1.6e-2 forward / 3e-2 gradients (Triton bf16 under the interpreter: 3e-2 / 4e-2, its
fp32 -> bf16 stores round less carefully); the fp32 ring 1e-5. grad_dtype=float32 on fp16/bf16 inputs: 1e-5 vs
float64 math on the same inputs (the rounded default is checked to be off by more than 2e-4).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
import torch
from helpers import non_contiguous, poison_, requires_cuda

from longrl import ops
from longrl._ops import attention as attn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

CPU_BACKENDS = ("aten", "torch", "triton")
MODES = attn.MODES
FWD_TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}
BWD_TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}
# (B, H, Hkv, Lq, Lk, D): odd lengths, GQA, MHA, Lq != Lk (the causal mode uses Lq for both).
SHAPES = [(2, 2, 1, 21, 21, 16), (1, 2, 2, 40, 40, 32), (2, 3, 1, 13, 30, 8)]


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def _qkv(shape, dtype, seed: int, mode: str, device: str = "cpu"):
    b, h, hkv, lq, lk, d = shape
    if mode == "causal":
        lk = lq
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen)
    k = torch.randn(b, hkv, lk, d, generator=gen)
    v = torch.randn(b, hkv, lk, d, generator=gen)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


def _fwd_tol(backend: str, dtype: torch.dtype) -> dict[str, float]:
    if backend == "triton" and dtype == torch.bfloat16:
        return {"atol": 3e-2, "rtol": 3e-2}
    return FWD_TOL[dtype]


def _bwd_tol(backend: str, dtype: torch.dtype) -> dict[str, float]:
    if backend == "triton" and dtype == torch.bfloat16:
        return {"atol": 4e-2, "rtol": 4e-2}
    return BWD_TOL[dtype]


# ----------------------------------------------------------------------------------------------------------
# the reference itself
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_reference_forward_gradcheck(mode: str) -> None:
    q, k, v = _qkv((1, 2, 1, 5, 6, 3), torch.float64, _seed("gc", mode), mode)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *x: attn.reference_forward(*x, mode, 0.7), (q, k, v))


@pytest.mark.parametrize("mode", MODES)
def test_reference_backward_equals_autograd(mode: str) -> None:
    q, k, v = _qkv((2, 4, 2, 7, 9, 5), torch.float64, _seed("ab", mode), mode)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, lse = attn.reference_forward(q, k, v, mode, 0.4)
    dout = torch.randn_like(out)
    expected = torch.autograd.grad(out, (q, k, v), dout)
    got = attn.reference_backward(
        dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), mode, 0.4
    )
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def test_reference_masks_by_hand() -> None:
    """Tiny hand-checked cases: the visible-key pattern of each mode."""
    assert attn.visible_mask("causal", 3, 3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert attn.visible_mask("kv_first_half", 2, 5).tolist() == [[1, 1, 0, 0, 0]] * 2
    assert attn.visible_mask("q_second_half", 5, 3).shape == (2, 3)
    # With v = one-hot key positions and equal scores, out is the attention distribution: uniform over the
    # visible keys, and lse = log(number of visible keys).
    v = torch.eye(4)[None, None]
    q = torch.zeros(1, 1, 4, 4)
    k = torch.zeros(1, 1, 4, 4)
    out, lse = attn.reference_forward(q, k, v, "causal")
    torch.testing.assert_close(out[0, 0, 2], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0]))
    torch.testing.assert_close(lse[0, 0], torch.log(torch.arange(1.0, 5.0)))


# ----------------------------------------------------------------------------------------------------------
# kernels vs reference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(backend: str, mode: str, dtype: torch.dtype, shape) -> None:
    if backend == "triton" and dtype == torch.bfloat16 and shape != SHAPES[0]:
        pytest.skip("interpreter time: Triton bf16 on one shape")
    q, k, v = _qkv(shape, dtype, _seed("fwd", backend, mode, dtype, shape), mode)
    out, lse = ops.block_attention(q, k, v, mode=mode, backend=backend)
    ref_out, ref_lse = attn.reference_forward(q, k, v, mode)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    torch.testing.assert_close(out.float(), ref_out, **_fwd_tol(backend, dtype))
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_backward_matches_reference(backend: str, mode: str, dtype: torch.dtype) -> None:
    shape = SHAPES[0] if dtype != torch.float32 else SHAPES[2]
    q, k, v = _qkv(shape, dtype, _seed("bwd", backend, mode, dtype), mode)
    ref_out, ref_lse = attn.reference_forward(q, k, v, mode)
    dout = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    dq, dk, dv = ops.block_attention_backward(dout, q, k, v, ref_out, ref_lse, mode=mode, backend=backend)
    expected = attn.reference_backward(dout, q, k, v, ref_out, ref_lse, mode)
    for got, want, like in zip((dq, dk, dv), expected, (q, k, v), strict=True):
        assert got.dtype == like.dtype and got.shape == like.shape
        torch.testing.assert_close(got.float(), want, **_bwd_tol(backend, dtype))
    # Rows outside the mode are exactly zero.
    if mode == "q_second_half":
        assert not dq[:, :, : q.shape[2] - q.shape[2] // 2].any()
    if mode == "kv_first_half":
        assert not dk[:, :, k.shape[2] // 2 :].any() and not dv[:, :, k.shape[2] // 2 :].any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_backward_float32_grads_are_not_rounded(backend: str, mode: str, dtype: torch.dtype) -> None:
    """grad_dtype=float32 on fp16/bf16 inputs returns the fp32 sums: within 1e-5 (atol and rtol) of float64
    math on the same inputs (measured <= 2e-6), where the default path, rounded to the input dtype, is off
    by 2e-4 or more (measured 5e-4..1.6e-2)."""
    q, k, v = _qkv(SHAPES[0], dtype, _seed("bwd32", backend, mode, dtype), mode)
    ref_out, ref_lse = attn.reference_forward(*(t.double() for t in (q, k, v)), mode)
    out, lse = ref_out.float(), ref_lse.float()
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    exact = attn.reference_backward(*(t.double() for t in (dout, q, k, v, out, lse)), mode)
    wide = ops.block_attention_backward(
        dout, q, k, v, out, lse, mode=mode, grad_dtype=torch.float32, backend=backend
    )
    narrow = ops.block_attention_backward(dout, q, k, v, out, lse, mode=mode, backend=backend)
    for got, rounded, want, like in zip(wide, narrow, exact, (q, k, v), strict=True):
        assert got.dtype == torch.float32 and rounded.dtype == dtype and got.shape == like.shape
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert max(float((g.double() - w).abs().max()) for g, w in zip(narrow, exact, strict=True)) > 2e-4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ("causal", "q_second_half", "kv_first_half"))
def test_non_contiguous_inputs(backend: str, mode: str) -> None:
    q, k, v = _qkv((2, 2, 1, 19, 22, 16), torch.float32, _seed("nc", backend, mode), mode)
    qn, kn, vn = non_contiguous(q), k.transpose(1, 2).contiguous().transpose(1, 2), non_contiguous(v)
    out, lse = ops.block_attention(qn, kn, vn, mode=mode, backend=backend)
    ref_out, ref_lse = attn.reference_forward(q, k, v, mode)
    torch.testing.assert_close(out, ref_out, **FWD_TOL[torch.float32])
    torch.testing.assert_close(lse, ref_lse, **FWD_TOL[torch.float32])
    dout = non_contiguous(torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(2)))
    grads = ops.block_attention_backward(
        dout, qn, kn, vn, non_contiguous(ref_out), ref_lse, mode=mode, backend=backend
    )
    for got, want in zip(grads, attn.reference_backward(dout, q, k, v, ref_out, ref_lse, mode), strict=True):
        torch.testing.assert_close(got, want, **BWD_TOL[torch.float32])


@pytest.mark.parametrize("block_m, block_n, mode", [(16, 32, "causal"), (32, 16, "causal"), (32, 16, "full")])
def test_triton_tile_shapes_and_outputs_fully_written(block_m: int, block_n: int, mode: str) -> None:
    """Unequal tiles exercise the causal loop bounds; every output buffer starts as NaN and must be overwritten."""
    from longrl.kernels.block_attention import attention_backward, attention_forward

    q, k, v = _qkv((1, 2, 1, 37, 37, 16), torch.float32, _seed("tiles", block_m, block_n, mode), mode)
    out = poison_(torch.empty_like(q))
    lse = poison_(torch.empty(q.shape[:3]))
    attention_forward(q, k, v, mode == "causal", 0.25, out=out, lse=lse, block_m=block_m, block_n=block_n)
    ref_out, ref_lse = attn.reference_forward(q, k, v, mode, 0.25)
    torch.testing.assert_close(out, ref_out, **FWD_TOL[torch.float32])
    torch.testing.assert_close(lse, ref_lse, **FWD_TOL[torch.float32])
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))
    grads = [poison_(torch.empty_like(t)) for t in (q, k, v)]
    attention_backward(
        dout, q, k, v, ref_out, ref_lse, mode == "causal", 0.25, *grads, block_m=block_m, block_n=block_n
    )
    for got, want in zip(
        grads, attn.reference_backward(dout, q, k, v, ref_out, ref_lse, mode, 0.25), strict=True
    ):
        torch.testing.assert_close(got, want, **BWD_TOL[torch.float32])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_custom_scale_fp16_gqa(backend: str) -> None:
    q, k, v = _qkv((1, 6, 3, 18, 18, 32), torch.float16, _seed("scale", backend), "full")
    out, lse = ops.block_attention(q, k, v, mode="full", scale=0.05, backend=backend)
    ref_out, ref_lse = attn.reference_forward(q, k, v, "full", 0.05)
    torch.testing.assert_close(out.float(), ref_out, **FWD_TOL[torch.float16])
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_modes_with_nothing_to_compute(backend: str) -> None:
    """kv_first_half with Lk = 1 has no keys, q_second_half with Lq = 1 no rows: empty results, zero grads."""
    q, k, v = _qkv((2, 2, 1, 5, 1, 8), torch.float32, 4, "full")
    out, lse = ops.block_attention(q, k, v, mode="kv_first_half", backend=backend)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()
    grads = ops.block_attention_backward(
        torch.ones_like(out), q, k, v, out, torch.zeros_like(lse), mode="kv_first_half", backend=backend
    )
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, (q, k, v), strict=True))
    q1 = q[:, :, :1]
    out, lse = ops.block_attention(q1, k, v, mode="q_second_half", backend=backend)
    assert out.shape == (2, 2, 0, 8) and lse.shape == (2, 2, 0)


def test_auto_backend_on_cpu_is_aten_and_correct() -> None:
    assert ops.backend_table()["block_attention"]["cpu"] == "aten"
    q, k, v = _qkv((1, 2, 2, 9, 9, 16), torch.float32, 5, "causal")
    out, lse = ops.block_attention(q, k, v, mode="causal")
    torch.testing.assert_close(out, attn.reference_forward(q, k, v, "causal")[0], **FWD_TOL[torch.float32])


def test_argument_errors() -> None:
    q, k, v = _qkv((1, 4, 2, 6, 8, 16), torch.float32, 6, "full")
    cases = [
        ((q, k, v, "sliding"), "mode"),
        ((q[0], k, v, "full"), "4-D"),
        ((q.double(), k.double(), v.double(), "full"), "float32"),
        ((q.half(), k, v, "full"), "share a dtype"),
        ((q, k, v[:, :, :5], "full"), "one shape"),
        ((q, k[..., :8], v[..., :8], "full"), "agree"),
        ((q[:, :3], k, v, "full"), "multiple"),
        ((q, k, v, "causal"), "Lq == Lk"),
        ((q, k.to("meta"), v.to("meta"), "full"), "device"),
    ]
    for (qq, kk, vv, mode), match in cases:
        with pytest.raises(ValueError, match=match):
            ops.block_attention(qq, kk, vv, mode=mode)
    out, lse = ops.block_attention(q, k, v, mode="q_second_half")
    with pytest.raises(ValueError, match="dout"):
        ops.block_attention_backward(torch.zeros_like(q), q, k, v, out, lse, mode="q_second_half")
    with pytest.raises(ValueError, match="lse"):
        ops.block_attention_backward(out, q, k, v, out, lse.half(), mode="q_second_half")
    with pytest.raises(ValueError, match="grad_dtype"):
        ops.block_attention_backward(out, q, k, v, out, lse, mode="q_second_half", grad_dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# ring composition: blocks merged with lse_merge == full attention on the unsharded sequence
# ----------------------------------------------------------------------------------------------------------


def _zigzag_rows(length: int, sp: int, rank: int) -> torch.Tensor:
    chunk = length // (2 * sp)
    first = torch.arange(rank * chunk, (rank + 1) * chunk)
    second = torch.arange((2 * sp - 1 - rank) * chunk, (2 * sp - rank) * chunk)
    return torch.cat([first, second])


def _ring_step_mode(rank: int, source: int) -> str:
    """Zigzag ring: rank r holds chunks r and 2sp-1-r. From an earlier rank s < r, both q chunks come after
    chunk s and before chunk 2sp-1-s: every query sees exactly the first half of the kv. From a later rank
    s > r, chunk r precedes both kv chunks (sees nothing) while chunk 2sp-1-r follows both: only the second half
    of the queries sees all of the kv."""
    if source == rank:
        return "causal"
    return "kv_first_half" if source < rank else "q_second_half"


def _ring(q, k, v, sp: int, layout: str, backend: str | None, merge_backend: str | None, dout):
    """Simulated ring (no processes): per-rank forward over sp steps merged with lse_merge_, then the backward
    of each step with the merged out/lse, gradients gathered back into sequence order."""
    length = q.shape[2]
    if layout == "zigzag":
        rows = [_zigzag_rows(length, sp, r).to(q.device) for r in range(sp)]
    else:
        rows = list(torch.arange(length, device=q.device).chunk(sp))
    half = length // (2 * sp)
    shard = [(q[:, :, i], k[:, :, i], v[:, :, i], dout[:, :, i]) for i in rows]
    merged = []
    for r in range(sp):
        acc_out = acc_lse = None
        for step in range(sp):
            s = (r - step) % sp
            mode = _ring_step_mode(r, s) if layout == "zigzag" else "full"
            out, lse = ops.block_attention(shard[r][0], shard[s][1], shard[s][2], mode=mode, backend=backend)
            if acc_out is None:
                acc_out, acc_lse = out.float().contiguous(), lse.contiguous()
            elif mode == "q_second_half":
                # Merge into the second half of the rows (lse_merge_ updates contiguous tensors only).
                part_out, part_lse = acc_out[:, :, half:].contiguous(), acc_lse[:, :, half:].contiguous()
                ops.lse_merge_(part_out, part_lse, out, lse, backend=merge_backend)
                acc_out[:, :, half:], acc_lse[:, :, half:] = part_out, part_lse
            else:
                ops.lse_merge_(acc_out, acc_lse, out, lse, backend=merge_backend)
        merged.append((acc_out, acc_lse))
    full_out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float32, device=q.device) for t in (q, k, v))
    for r in range(sp):
        full_out[:, :, rows[r]] = merged[r][0]
        for step in range(sp):
            s = (r - step) % sp
            mode = _ring_step_mode(r, s) if layout == "zigzag" else "full"
            sel = slice(half, None) if mode == "q_second_half" else slice(None)
            out, lse = merged[r][0][:, :, sel], merged[r][1][:, :, sel]
            g_q, g_k, g_v = ops.block_attention_backward(
                shard[r][3][:, :, sel],
                shard[r][0],
                shard[s][1],
                shard[s][2],
                out,
                lse,
                mode=mode,
                backend=backend,
            )
            dq[:, :, rows[r]] += g_q.float()
            dk[:, :, rows[s]] += g_k.float()
            dv[:, :, rows[s]] += g_v.float()
    return full_out, dq, dk, dv


def _full_attention_with_grads(q, k, v, causal: bool, dout):
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    out, _ = attn.reference_forward(q64, k64, v64, "causal" if causal else "full")
    grads = torch.autograd.grad(out, (q64, k64, v64), dout.double())
    return out.detach(), grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("sp, chunk", [(2, 3), (3, 2), (2, 1), (3, 1)])
def test_zigzag_ring_equals_full_causal_attention(backend: str, sp: int, chunk: int) -> None:
    length = 2 * sp * chunk
    gen = torch.Generator().manual_seed(_seed("ring", backend, sp, chunk))
    q = torch.randn(2, 2, length, 16, generator=gen)
    k, v = torch.randn(2, 1, length, 16, generator=gen), torch.randn(2, 1, length, 16, generator=gen)
    dout = torch.randn(q.shape, generator=gen)
    merge_backend = "triton" if backend == "triton" else None
    out, dq, dk, dv = _ring(q, k, v, sp, "zigzag", backend, merge_backend, dout)
    ref_out, ref_grads = _full_attention_with_grads(q, k, v, True, dout)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip((dq, dk, dv), ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("sp", (2, 3))
def test_contiguous_ring_equals_full_attention(backend: str, sp: int) -> None:
    gen = torch.Generator().manual_seed(_seed("ring-full", backend, sp))
    length = 5 * sp
    q = torch.randn(1, 2, length, 8, generator=gen)
    k, v = torch.randn(1, 1, length, 8, generator=gen), torch.randn(1, 1, length, 8, generator=gen)
    dout = torch.randn(q.shape, generator=gen)
    out, dq, dk, dv = _ring(q, k, v, sp, "contiguous", backend, None, dout)
    ref_out, ref_grads = _full_attention_with_grads(q, k, v, False, dout)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip((dq, dk, dv), ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): aten and Triton on CUDA tensors against the reference
# ----------------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("backend", ("aten", "triton", "torch"))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize(
    "shape",
    [(2, 8, 2, 257, 257, 128), (1, 4, 4, 100, 64, 64), (2, 4, 1, 33, 50, 80), (1, 2, 1, 31, 31, 12)],
    ids=str,
)
def test_cuda_forward_backward_match_reference(backend: str, mode: str, dtype: torch.dtype, shape) -> None:
    q, k, v = _qkv(shape, dtype, _seed("cuda", backend, mode, dtype, shape), mode, device="cuda")
    out, lse = ops.block_attention(q, k, v, mode=mode, backend=backend)
    ref_out, ref_lse = attn.reference_forward(q, k, v, mode)
    torch.testing.assert_close(out.float(), ref_out, **FWD_TOL[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)
    dout = torch.randn(ref_out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0)).to(
        dtype
    )
    grads = ops.block_attention_backward(dout, q, k, v, ref_out, ref_lse, mode=mode, backend=backend)
    for got, want in zip(grads, attn.reference_backward(dout, q, k, v, ref_out, ref_lse, mode), strict=True):
        # Gradients sum over up to 257 rows: scale the tolerance with their magnitude.
        tol = BWD_TOL[dtype]
        torch.testing.assert_close(
            got.float(), want, atol=tol["atol"] * max(1.0, want.abs().max().item()), rtol=tol["rtol"]
        )


@requires_cuda
@pytest.mark.parametrize("backend", ("aten", "triton"))
def test_cuda_zigzag_ring(backend: str) -> None:
    torch.manual_seed(0)
    sp, chunk = 3, 40
    length = 2 * sp * chunk
    q = torch.randn(1, 4, length, 64, device="cuda")
    k, v = torch.randn(1, 2, length, 64, device="cuda"), torch.randn(1, 2, length, 64, device="cuda")
    dout = torch.randn(q.shape, device="cuda")
    out, dq, dk, dv = _ring(q, k, v, sp, "zigzag", backend, "cuda" if backend == "aten" else "triton", dout)
    ref_out, ref_grads = _full_attention_with_grads(q, k, v, True, dout)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip((dq, dk, dv), ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from longrl.kernels import block_attention as kernels

constants = {"CAUSAL": True, "UPCAST": False, "DOT_PRECISION": None, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 128}
for fn in (kernels._fwd_kernel, kernels._bwd_dkdv_kernel, kernels._bwd_dq_kernel):
    names = list(fn.arg_names)
    signature = {}
    for n in names:
        if n in constants:
            signature[n] = "constexpr"
        elif n in ("lse_ptr", "delta_ptr"):
            signature[n] = "*fp32"
        elif n.endswith("_ptr"):
            signature[n] = "*bf16"
        else:
            signature[n] = "fp32" if n == "scale" else "i32"
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(n),): v for n, v in constants.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 80, 32), options={"num_warps": 8, "num_stages": 3})
    assert compiled.asm.get("cubin") or compiled.asm.get("ptx"), fn
print("compiled")
"""


def test_triton_kernels_compile_for_gpu() -> None:
    """Compile the GPU-only path (bf16 tiles straight into tl.dot) ahead of time for sm_80, without a GPU.

    The interpreter runs every tile in fp32, so this is the only CPU-side check of the bf16 path's types. It runs
    in a subprocess because TRITON_INTERPRET=1 (set for this test session) replaces the JIT compiler.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    last_line = (result.stderr.strip().splitlines() or [""])[-1]
    if "Error" in last_line and "triton" in last_line and ("import" in last_line or "module" in last_line):
        pytest.skip(f"Triton's ahead-of-time compile API is not available here: {result.stderr[-300:]}")
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
