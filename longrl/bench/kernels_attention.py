"""Ring-attention pieces: lse_merge against a naive unfused torch merge, and block attention forward/backward
("aten", "triton", torch math) at one ring step's size.

lse_merge is memory-bound: rows report GB/s and % of the copy bandwidth. Block attention is compute-bound: rows
report time, peak memory and (in the note) achieved GFLOP/s, with the torch math backend as the baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from longrl import ops
from longrl._backend import available
from longrl.bench.harness import BenchRow, make_row, peak_memory_bytes, time_fn


def _naive_merge(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    """The plain-torch baseline: logaddexp + exp weights, each step its own kernel and temporary."""
    new_lse = torch.logaddexp(lse, block_lse)
    merged = (
        out * torch.exp(lse - new_lse)[..., None]
        + block_out.float() * torch.exp(block_lse - new_lse)[..., None]
    )
    out.copy_(merged)
    lse.copy_(new_lse)


def _lse_merge_rows(device: torch.device, quick: bool, copy_gbps: float) -> list[BenchRow]:
    if device.type == "cuda":
        b, h, length, d = (1, 28, 8192 if quick else 32768, 128)
        dtype = torch.bfloat16
    else:
        b, h, length, d = (1, 8, 512 if quick else 4096, 128)
        dtype = torch.float32
    shape = f"B={b} H={h} L={length} D={d}"
    out = torch.randn(b, h, length, d, device=device)
    lse = torch.randn(b, h, length, device=device)
    block_out = torch.randn(b, h, length, d, device=device).to(dtype)
    block_lse = torch.randn(b, h, length, device=device)
    rows_n = b * h * length
    # Read and write out and lse, read the block: the least any merge must move.
    nbytes = 2 * out.numel() * 4 + block_out.numel() * block_out.element_size() + 3 * rows_n * 4
    reps = 3 if quick else 7

    impls: list[tuple[str, Callable[[], object]]] = [
        ("torch-baseline", lambda: _naive_merge(out, lse, block_out, block_lse))
    ]
    for backend in ("cpp", "cuda", "triton", "torch"):
        if not available(backend, device.type) or (backend == "triton" and device.type != "cuda"):
            continue  # Triton on CPU only runs interpreted: not a measurement
        impls.append((backend, lambda be=backend: ops.lse_merge_(out, lse, block_out, block_lse, backend=be)))

    rows: list[BenchRow] = []
    baseline = None
    for name, fn in impls:
        seconds = time_fn(fn, device, warmup=2, reps=reps)
        baseline = baseline or seconds
        rows.append(
            make_row(
                "lse_merge",
                name,
                shape,
                dtype,
                device,
                seconds,
                bytes_moved=nbytes,
                copy_gbps=copy_gbps,
                peak_bytes=peak_memory_bytes(fn, device),
                baseline_seconds=baseline,
            )
        )
    return rows


def _attention_rows(device: torch.device, quick: bool) -> list[BenchRow]:
    if device.type == "cuda":
        b, h, hkv, length, d, dtype = (1, 28, 4, 2048 if quick else 8192, 128, torch.bfloat16)
        backends = ("torch", "aten", "triton")
    else:
        b, h, hkv, length, d, dtype = (1, 4, 2, 256 if quick else 1024, 64, torch.float32)
        backends = ("torch", "aten")  # Triton on CPU only runs interpreted: not a measurement
    mode = "causal"
    shape = f"B={b} H={h} Hkv={hkv} L={length} D={d} {mode}"
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, h, length, d, device=device, generator=gen).to(dtype)
    k = torch.randn(b, hkv, length, d, device=device, generator=gen).to(dtype)
    v = torch.randn(b, hkv, length, d, device=device, generator=gen).to(dtype)
    dout = torch.randn(b, h, length, d, device=device, generator=gen).to(dtype)
    # Causal: half of the 2 matmuls (QK^T, PV) forward, 5 backward (recompute S, dV, dP, dQ, dK).
    fwd_flops = 2 * 2 * b * h * length * length * d / 2
    bwd_flops = 2.5 * fwd_flops
    reps = 2 if quick else 5

    rows: list[BenchRow] = []
    base: dict[str, float] = {}
    for backend in backends:
        if not available(backend, device.type):
            continue
        out, lse = ops.block_attention(q, k, v, mode=mode, backend=backend)

        def fwd(be: str = backend) -> object:
            return ops.block_attention(q, k, v, mode=mode, backend=be)

        def bwd(be: str = backend, out: torch.Tensor = out, lse: torch.Tensor = lse) -> object:
            return ops.block_attention_backward(dout, q, k, v, out, lse, mode=mode, backend=be)

        for op, fn, flops in (
            ("block_attention_fwd", fwd, fwd_flops),
            ("block_attention_bwd", bwd, bwd_flops),
        ):
            seconds = time_fn(fn, device, warmup=1, reps=reps)
            base.setdefault(op, seconds)
            impl = "torch-baseline" if backend == "torch" else backend
            rows.append(
                make_row(
                    op,
                    impl,
                    shape,
                    dtype,
                    device,
                    seconds,
                    peak_bytes=peak_memory_bytes(fn, device),
                    baseline_seconds=base[op],
                    note=f"{flops / seconds / 1e9:.1f} GFLOP/s",
                )
            )
    return rows


def run(device: torch.device, quick: bool, copy_gbps: float) -> list[BenchRow]:
    """lse_merge (every backend vs naive torch) and block attention fwd/bwd (aten, triton, torch math)."""
    return _lse_merge_rows(device, quick, copy_gbps) + _attention_rows(device, quick)
