"""Triton lse_merge: a tile of rows per program, each row merged in fp32 (see longrl.ops.lse_merge_)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lse_merge_kernel(
    out_ptr, lse_ptr, block_out_ptr, block_lse_ptr, rows, dim,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    a = tl.load(lse_ptr + row, mask=row_ok, other=float("-inf"))
    b = tl.load(block_lse_ptr + row, mask=row_ok, other=float("-inf"))
    a_empty = a == float("-inf")
    b_empty = b == float("-inf")
    m = tl.maximum(a, b)
    m_safe = tl.where(a_empty & b_empty, 0.0, m)
    ea = tl.exp(a - m_safe)
    eb = tl.exp(b - m_safe)
    total = ea + eb
    merged = m_safe + tl.log(total)
    # Weights as ratios, not exp(a - merged): the float32 rounding of the merged lse stays out of them.
    total_safe = tl.where(total > 0.0, total, 1.0)
    wa = tl.where(a_empty, 0.0, ea / total_safe)
    wb = tl.where(b_empty, 0.0, eb / total_safe)
    keep = b_empty  # block contributes nothing: the row stays as it is
    for d0 in range(0, dim, BLOCK_D):
        col = d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (col[None, :] < dim)
        offs = row[:, None].to(tl.int64) * dim + col[None, :]
        o = tl.load(out_ptr + offs, mask=mask, other=0.0)
        # Load bf16/fp16 and convert before any arithmetic (the interpreter's bf16 math is wrong).
        bo = tl.load(block_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        new = tl.where(a_empty[:, None], 0.0, o * wa[:, None]) + bo * wb[:, None]
        new = tl.where(keep[:, None], o, new)
        tl.store(out_ptr + offs, new, mask=mask)
    tl.store(lse_ptr + row, tl.where(b_empty, a, merged), mask=row_ok)


def lse_merge_triton_(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    """In place on contiguous out [rows..., D] fp32 / lse fp32 from contiguous block tensors."""
    rows = lse.numel()
    if rows == 0:
        return
    dim = out.shape[-1]
    block_d = min(triton.next_power_of_2(max(dim, 1)), 256)
    block_r = max(1, min(64, 4096 // block_d))
    grid = (triton.cdiv(rows, block_r),)
    _lse_merge_kernel[grid](out, lse, block_out, block_lse, rows, dim, BLOCK_R=block_r, BLOCK_D=block_d)
