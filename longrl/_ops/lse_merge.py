"""lse_merge implementations: torch reference, longrl._C (CPU/CUDA) and Triton. See longrl.ops.lse_merge_."""

from __future__ import annotations

import torch

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_args(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    if out.dtype != torch.float32 or lse.dtype != torch.float32 or block_lse.dtype != torch.float32:
        raise ValueError("lse_merge_: out, lse and block_lse must be float32")
    if block_out.dtype not in _FLOATS:
        raise ValueError(f"lse_merge_: block_out must be float32/float16/bfloat16, got {block_out.dtype}")
    if not (out.is_contiguous() and lse.is_contiguous()):
        raise ValueError("lse_merge_: out and lse are updated in place and must be contiguous")
    if out.dim() != lse.dim() + 1 or out.shape[:-1] != lse.shape:
        raise ValueError(
            f"lse_merge_: out.shape[:-1] must equal lse.shape, got {tuple(out.shape)} / {tuple(lse.shape)}"
        )
    if block_out.shape != out.shape or block_lse.shape != lse.shape:
        raise ValueError("lse_merge_: block_out/block_lse must have the shapes of out/lse")
    if len({t.device for t in (out, lse, block_out, block_lse)}) != 1:
        raise ValueError("lse_merge_: all tensors must be on one device")


def reference(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch math (fp32), out of place; the definition the kernels are tested against."""
    a, b = lse.float(), block_lse.float()
    merged = torch.logaddexp(a, b)
    # The weights exp(a - merged) and exp(b - merged) written as sigmoid(a - b) and sigmoid(b - a): the same
    # numbers without the float32 rounding of `merged` (an ulp of 1e-3 at |lse| = 1e4).
    # -inf - (-inf) is NaN: rows where both are -inf keep lse=-inf and their out untouched.
    both_empty = torch.isneginf(a) & torch.isneginf(b)
    diff = torch.where(both_empty, torch.zeros_like(a), a - b)
    wa = torch.where(torch.isneginf(a), torch.zeros_like(a), torch.sigmoid(diff))
    wb = torch.where(torch.isneginf(b), torch.zeros_like(b), torch.sigmoid(-diff))
    # Where a weight is 0 the corresponding out must not contribute even if it holds NaN/inf.
    term_a = torch.where(
        wa[..., None] == 0, torch.zeros_like(out, dtype=torch.float32), out.float() * wa[..., None]
    )
    bo = block_out.float()
    term_b = torch.where(wb[..., None] == 0, torch.zeros_like(bo), bo * wb[..., None])
    new_out = torch.where(both_empty[..., None], out.float(), term_a + term_b)
    return new_out, merged


def lse_merge_(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor, backend: str
) -> None:
    if backend in ("cpp", "cuda"):
        torch.ops.longrl.lse_merge_(out, lse, block_out, block_lse)
    elif backend == "triton":
        from longrl.kernels.lse_merge import lse_merge_triton_

        lse_merge_triton_(out, lse, block_out.contiguous(), block_lse.contiguous())
    else:
        new_out, new_lse = reference(out, lse, block_out, block_lse)
        out.copy_(new_out)
        lse.copy_(new_lse)
