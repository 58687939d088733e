"""lse_merge / lse_merge_: every backend against the torch reference and an independent float64 derivation.

Reference 1: longrl._ops.lse_merge.reference (fp32 torch math).
Reference 2: float64 softmax weights over the two lse values (w = softmax([lse, block_lse])), which is what the
merge means, plus a semantic check: merging attention over two key halves equals attention over all keys.
Tolerances: fp32 math, so atol = rtol = 1e-5 (rtol covers |lse| up to 1e4) for every block_out dtype (the
block is upcast exactly); against the float64 derivation 2e-5.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from helpers import requires_cuda

from longrl import ops
from longrl._ops.lse_merge import reference

# Rows with both lse = -inf take log(0) inside the Triton kernel (then masked): numpy warns in the interpreter.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

CPU_BACKENDS = ("cpp", "torch", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: str = "cpu", lse_scale: float = 3.0
):
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(*shape, generator=gen)
    lse = torch.randn(*shape[:-1], generator=gen) * lse_scale
    block_out = torch.randn(*shape, generator=gen).to(dtype)
    block_lse = torch.randn(*shape[:-1], generator=gen) * lse_scale
    return out.to(device), lse.to(device), block_out.to(device), block_lse.to(device)


def _float64_merge(out, lse, block_out, block_lse):
    """Independent derivation: the merged row is the softmax-weighted mix of the two partial rows."""
    a, b = lse.double(), block_lse.double()
    both_empty = torch.isneginf(a) & torch.isneginf(b)
    stacked = torch.stack([a, b], dim=-1)
    weights = torch.softmax(torch.where(both_empty[..., None], 0.0, stacked), dim=-1)
    mixed = torch.where(
        weights[..., :1] == 0, 0.0, weights[..., :1] * out.double().nan_to_num()
    ) + torch.where(weights[..., 1:] == 0, 0.0, weights[..., 1:] * block_out.double().nan_to_num())
    new_out = torch.where(both_empty[..., None], out.double(), mixed)
    new_lse = torch.where(both_empty, float("-inf"), torch.logsumexp(stacked, dim=-1))
    return new_out, new_lse


def _run(backend: str, out, lse, block_out, block_lse):
    out, lse = out.clone(), lse.clone()
    ops.lse_merge_(out, lse, block_out, block_lse, backend=backend)
    return out, lse


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", [(2, 3, 17, 64), (1, 2, 9, 80), (3, 5, 1), (2, 7, 3), (4, 11), (1, 1, 1, 1)], ids=str
)
def test_matches_reference(backend: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    seed = zlib.crc32(repr((backend, dtype, shape)).encode())
    out, lse, block_out, block_lse = _inputs(shape, dtype, seed)
    got_out, got_lse = _run(backend, out, lse, block_out, block_lse)
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out, ref_out, **TOL)
    torch.testing.assert_close(got_lse, ref_lse, **TOL)
    f64_out, f64_lse = _float64_merge(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out.double(), f64_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got_lse.double(), f64_lse, atol=2e-5, rtol=2e-5)


def test_reference_matches_float64_derivation() -> None:
    out, lse, block_out, block_lse = _inputs((3, 4, 13, 8), torch.float32, 0)
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    f64_out, f64_lse = _float64_merge(out, lse, block_out, block_lse)
    torch.testing.assert_close(ref_out.double(), f64_out, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(ref_lse.double(), f64_lse, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_merging_two_key_halves_equals_attention_over_all_keys(backend: str) -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen, dtype=torch.float64) for n in (7, 19, 19))
    scores = q @ k.transpose(-1, -2)
    full_out = torch.softmax(scores, -1) @ v
    full_lse = torch.logsumexp(scores, -1)
    parts = [
        (torch.softmax(s, -1) @ vv, torch.logsumexp(s, -1))
        for s, vv in ((scores[..., :8], v[:, :, :8]), (scores[..., 8:], v[:, :, 8:]))
    ]
    out, lse = parts[0][0].float().contiguous(), parts[0][1].float().contiguous()
    ops.lse_merge_(out, lse, parts[1][0].float(), parts[1][1].float(), backend=backend)
    torch.testing.assert_close(out.double(), full_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), full_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_without_keys(backend: str, dtype: torch.dtype) -> None:
    """Row 0: running empty (its out is garbage, must be ignored); row 1: block empty; row 2: both empty."""
    out, lse, block_out, block_lse = _inputs((2, 3, 5, 6), dtype, 2)
    lse[:, :, 0] = float("-inf")
    out[:, :, 0] = float("nan")  # poison: a row that saw no key yet must be fully overwritten by the block
    block_lse[:, :, 1] = float("-inf")
    block_out[:, :, 1] = float("nan")  # an empty block's (undefined) values must never leak in
    lse[:, :, 2] = float("-inf")
    block_lse[:, :, 2] = float("-inf")
    out[:, :, 2] = 0.0
    got_out, got_lse = _run(backend, out, lse, block_out, block_lse)
    assert not got_out.isnan().any()
    assert torch.equal(got_out[:, :, 0], block_out[:, :, 0].float())
    assert torch.equal(got_lse[:, :, 0], block_lse[:, :, 0])
    assert torch.equal(got_out[:, :, 1], out[:, :, 1])
    assert torch.equal(got_lse[:, :, 1], lse[:, :, 1])
    assert torch.equal(got_out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    assert torch.isneginf(got_lse[:, :, 2]).all()
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out[:, :, 3:], ref_out[:, :, 3:], **TOL)
    torch.testing.assert_close(got_lse, ref_lse, **TOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "lse_a, lse_b",
    [
        (80.0, -80.0),
        (-80.0, 80.0),
        (80.0, 80.0),
        (1e4, -1e4),
        (-1e4, 1e4),
        (1e4, 1e4 + 0.5),
        (-1e4, -1e4 - 3.0),
        (3e38, -3e38),
        (-88.0, -104.0),
    ],
)
def test_extreme_lse_is_stable(backend: str, lse_a: float, lse_b: float) -> None:
    out, lse, block_out, block_lse = _inputs((2, 4, 7, 32), torch.float32, 3, lse_scale=0.0)
    lse += lse_a
    block_lse += lse_b
    lse[:, :, ::2] += torch.linspace(-1, 1, 4)[None, :, None]  # a spread around the extreme value
    got_out, got_lse = _run(backend, out, lse, block_out, block_lse)
    assert torch.isfinite(got_out).all() and torch.isfinite(got_lse).all()
    f64_out, f64_lse = _float64_merge(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out.double(), f64_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got_lse.double(), f64_lse, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_blocks(backend: str, dtype: torch.dtype) -> None:
    out, lse, block_out, block_lse = _inputs((2, 3, 11, 24), dtype, 4)
    strided_out = block_out.transpose(1, 2).contiguous().transpose(1, 2)  # [B, L, H, D] storage
    strided_lse = torch.stack([block_lse, block_lse], -1)[..., 0]
    assert not strided_out.is_contiguous() and not strided_lse.is_contiguous()
    got_out, got_lse = _run(backend, out, lse, strided_out, strided_lse)
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out, ref_out, **TOL)
    torch.testing.assert_close(got_lse, ref_lse, **TOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_in_place_semantics(backend: str) -> None:
    out, lse, block_out, block_lse = _inputs((2, 2, 5, 8), torch.float32, 5)
    # A contiguous view with a storage offset: the kernels must write exactly its elements.
    out_storage = torch.full((out.numel() + 3,), 7.0)
    out_view = out_storage[1 : 1 + out.numel()].view(out.shape)
    out_view.copy_(out)
    lse_copy, ptrs = lse.clone(), (out_view.data_ptr(), lse.data_ptr())
    block_before = block_out.clone(), block_lse.clone()
    assert ops.lse_merge_(out_view, lse_copy, block_out, block_lse, backend=backend) is None
    assert (out_view.data_ptr(), lse.data_ptr()) == ptrs
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(out_view, ref_out, **TOL)
    torch.testing.assert_close(lse_copy, ref_lse, **TOL)
    assert out_storage[0] == 7.0 and (out_storage[-2:] == 7.0).all()
    assert torch.equal(block_out, block_before[0]) and torch.equal(block_lse, block_before[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_of_place_leaves_inputs(backend: str) -> None:
    out, lse, block_out, block_lse = _inputs((3, 6, 10), torch.float16, 6)
    out16 = out.half()
    before = out16.clone(), lse.clone()
    new_out, new_lse = ops.lse_merge(out16, lse, block_out, block_lse, backend=backend)
    assert new_out.dtype == torch.float32 and new_lse.dtype == torch.float32
    assert torch.equal(out16, before[0]) and torch.equal(lse, before[1])
    ref_out, ref_lse = reference(out16.float(), lse, block_out, block_lse)
    torch.testing.assert_close(new_out, ref_out, **TOL)
    torch.testing.assert_close(new_lse, ref_lse, **TOL)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_and_single_dim(backend: str) -> None:
    out, lse = torch.zeros(0, 4), torch.zeros(0)
    ops.lse_merge_(out, lse, torch.zeros(0, 4), torch.zeros(0), backend=backend)
    out, lse, block_out, block_lse = _inputs((9, 1), torch.float32, 7)
    got_out, got_lse = _run(backend, out, lse, block_out, block_lse)
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out, ref_out, **TOL)
    torch.testing.assert_close(got_lse, ref_lse, **TOL)


def test_argument_errors() -> None:
    out, lse, block_out, block_lse = _inputs((2, 3, 4), torch.float32, 8)
    cases = [
        ((out.half(), lse, block_out, block_lse), "float32"),
        ((out, lse.double(), block_out, block_lse), "float32"),
        ((out, lse, block_out, block_lse.half()), "float32"),
        ((out, lse, block_out.double(), block_lse), "block_out"),
        ((out.transpose(0, 1), lse.transpose(0, 1), block_out, block_lse), "contiguous"),
        ((out, lse[:1], block_out, block_lse), "shape"),
        ((out, lse, block_out[..., :3], block_lse), "shape"),
        ((out, lse, block_out, block_lse[:1]), "shape"),
        ((out, lse, block_out.to("meta"), block_lse), "device"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            ops.lse_merge_(*args)


def test_compiled_op_checks_its_arguments() -> None:
    """The C++ op is callable directly (torch.ops.longrl.lse_merge_): it must reject bad input itself."""
    pytest.importorskip("longrl._C")
    out, lse, block_out, block_lse = _inputs((2, 3, 4), torch.float32, 9)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.longrl.lse_merge_(out.half(), lse, block_out, block_lse)
    with pytest.raises(RuntimeError, match="shape"):
        torch.ops.longrl.lse_merge_(out, lse, block_out[..., :2], block_lse)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.longrl.lse_merge_(out.transpose(0, 1), lse.transpose(0, 1), block_out, block_lse)


# ----------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): the CUDA kernel and Triton on CUDA tensors against the reference
# ----------------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("backend", ("cuda", "triton"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 28, 129, 128), (1, 3, 17, 80), (5, 7, 3), (2, 1)], ids=str)
def test_cuda_matches_reference(backend: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    out, lse, block_out, block_lse = _inputs(shape, dtype, 10, device="cuda")
    lse[..., 0] = float("-inf")
    block_lse[..., -1] = float("-inf")
    got_out, got_lse = _run(backend, out, lse, block_out, block_lse)
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(got_out, ref_out, **TOL)
    torch.testing.assert_close(got_lse, ref_lse, **TOL)
    assert not got_out.isnan().any()


@requires_cuda
@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_cuda_unaligned_views_and_extremes(backend: str) -> None:
    """Row pointers off 16-byte alignment (storage offset 1) must not take a vectorized path."""
    out, lse, block_out, block_lse = _inputs((3, 4, 9, 64), torch.float32, 11, device="cuda")
    lse[0] += 1e4
    block_lse[1] -= 1e4
    out_storage = torch.zeros(out.numel() + 1, device="cuda")
    out_view = out_storage[1:].view(out.shape)
    out_view.copy_(out)
    block_storage = torch.zeros(block_out.numel() + 1, device="cuda")
    block_view = block_storage[1:].view(block_out.shape)
    block_view.copy_(block_out)
    lse_copy = lse.clone()
    ops.lse_merge_(out_view, lse_copy, block_view, block_lse, backend=backend)
    ref_out, ref_lse = reference(out, lse, block_out, block_lse)
    torch.testing.assert_close(out_view, ref_out, **TOL)
    torch.testing.assert_close(lse_copy, ref_lse, **TOL)
    assert out_storage[0] == 0.0


@requires_cuda
@pytest.mark.parametrize("backend", ("cuda", "triton"))
def test_cuda_rows_without_keys(backend: str) -> None:
    out, lse, block_out, block_lse = _inputs((4, 6, 16), torch.bfloat16, 12, device="cuda")
    lse[:, 0] = float("-inf")
    out[:, 0] = float("nan")
    block_lse[:, 1] = float("-inf")
    lse[:, 2] = float("-inf")
    block_lse[:, 2] = float("-inf")
    out[:, 2] = 0.0
    got_out, got_lse = _run(backend, out, lse, block_out, block_lse)
    assert not got_out.isnan().any()
    assert torch.equal(got_out[:, 0], block_out[:, 0].float())
    assert torch.equal(got_out[:, 1], out[:, 1])
    assert torch.isneginf(got_lse[:, 2]).all()


def test_compiled_op_rejects_float64_block_out_like_the_python_door() -> None:
    out, lse = torch.zeros(2, 4), torch.zeros(2)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        torch.ops.longrl.lse_merge_(out, lse, torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2))
