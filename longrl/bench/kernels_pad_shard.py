"""Benchmark pad_and_shard / unshard against the plain-torch way of doing the same.

Baselines: pad_and_shard = F.pad to the full padded length, chunk, cat this rank's chunks (two passes, one
full-size padded intermediate); unshard = torch.cat of the gathered shards, then index_select of the original
order (two passes). Sizes: an embedding sequence of ~256k tokens x 3584 bf16 on CUDA (Qwen2.5-VL-7B hidden
size), 32k x 3584 on CPU, 4k x 1024 with quick. The length is 3 short of a round number so padding happens.
bytes_moved is the minimum traffic: pad_and_shard reads the shard's valid rows and writes the shard; unshard
reads and writes L rows. Rows named "<backend> out=" write into a preallocated output (the kernel alone); the
others include allocating their result, which on CPU means page-faulting fresh memory on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from longrl import ops
from longrl._ops import pad_shard as _pad_shard
from longrl.bench.harness import BenchRow, make_row, peak_memory_bytes, time_fn

SP_SIZE = 4
RANK = 1
LAYOUT = "zigzag"


def _sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    if device.type == "cuda":
        return (64 * 1024 if quick else 256 * 1024) - 3, 3584
    return (4 * 1024 if quick else 32 * 1024) - 3, 1024 if quick else 3584


def _baseline_shard(x: torch.Tensor, pad: int) -> torch.Tensor:
    chunks = F.pad(x, (0, 0, 0, pad)).chunk(2 * SP_SIZE, dim=1)
    return torch.cat([chunks[RANK], chunks[2 * SP_SIZE - 1 - RANK]], dim=1)


def _prime(fns: list, times: int = 2) -> None:
    # The first calls of a new output size pay for the allocator adapting (on CPU glibc maps fresh pages for
    # a while): run everything a few times before timing anything, so the order of the rows does not matter.
    for _ in range(times):
        for fn in fns:
            fn()


def run(device: torch.device, quick: bool, copy_gbps: float) -> list[BenchRow]:
    """Rows for pad_and_shard and unshard: the auto backend, the "torch" fallback and the plain-torch baseline."""
    length, hidden = _sizes(device, quick)
    dtype = torch.bfloat16
    x = torch.randn(1, length, hidden, device=device).to(dtype)
    shard, spec = ops.pad_and_shard(x, sp_size=SP_SIZE, rank=RANK, layout=LAYOUT)
    shape = f"[1, {length}, {hidden}] sp={SP_SIZE} {LAYOUT} rank={RANK}"
    row_bytes = hidden * x.element_size()
    positions = spec.positions(RANK)
    shard_bytes = int((positions < length).sum()) * row_bytes + spec.shard_length * row_bytes
    auto = ops.backend_table()["pad_and_shard"][device.type]
    rows: list[BenchRow] = []
    # CPU: fewer repetitions keep the full size near 20 s on 2 cores (the baseline alone takes ~0.3 s a call).
    timing = {} if device.type == "cuda" else {"warmup": 1, "reps": 5}

    candidates = {auto: lambda: ops.pad_and_shard(x, sp_size=SP_SIZE, rank=RANK, layout=LAYOUT)}
    candidates[f"{auto} out="] = lambda: _pad_shard.shard_into(shard, x, spec, RANK, 0, auto)
    if auto != "torch":
        candidates["torch"] = lambda: ops.pad_and_shard(
            x, sp_size=SP_SIZE, rank=RANK, layout=LAYOUT, backend="torch"
        )
    _prime([lambda: _baseline_shard(x, spec.pad), *candidates.values()])
    base_s = time_fn(lambda: _baseline_shard(x, spec.pad), device, **timing)
    for impl, fn in candidates.items():
        seconds = time_fn(fn, device, **timing)
        rows.append(make_row("pad_and_shard", impl, shape, dtype, device, seconds, bytes_moved=shard_bytes,
                             copy_gbps=copy_gbps, peak_bytes=peak_memory_bytes(fn, device),
                             baseline_seconds=base_s))  # fmt: skip
    rows.append(make_row("pad_and_shard", "torch-baseline", shape, dtype, device, base_s, bytes_moved=shard_bytes,
                         copy_gbps=copy_gbps, peak_bytes=peak_memory_bytes(lambda: _baseline_shard(x, spec.pad), device),
                         note="F.pad + chunk + cat"))  # fmt: skip

    shards = [ops.pad_and_shard(x, sp_size=SP_SIZE, rank=r, layout=LAYOUT)[0] for r in range(SP_SIZE)]
    order = torch.cat([spec.positions(r) for r in range(SP_SIZE)]).argsort()[:length].to(device)
    unshard_bytes = 2 * length * row_bytes
    ushape = f"{SP_SIZE} x [1, {spec.shard_length}, {hidden}] -> [1, {length}, {hidden}] {LAYOUT}"

    def baseline_unshard() -> torch.Tensor:
        return torch.cat(shards, dim=1).index_select(1, order)

    restored = torch.empty_like(x)
    ucandidates = {
        auto: lambda: ops.unshard(shards, spec),
        f"{auto} out=": lambda: _pad_shard.unshard_into(restored, shards, spec, auto),
    }
    if auto != "torch":
        ucandidates["torch"] = lambda: ops.unshard(shards, spec, backend="torch")
    _prime([baseline_unshard, *ucandidates.values()])
    ubase_s = time_fn(baseline_unshard, device, **timing)
    for impl, fn in ucandidates.items():
        seconds = time_fn(fn, device, **timing)
        rows.append(make_row("unshard", impl, ushape, dtype, device, seconds, bytes_moved=unshard_bytes,
                             copy_gbps=copy_gbps, peak_bytes=peak_memory_bytes(fn, device),
                             baseline_seconds=ubase_s))  # fmt: skip
    rows.append(make_row("unshard", "torch-baseline", ushape, dtype, device, ubase_s, bytes_moved=unshard_bytes,
                         copy_gbps=copy_gbps, peak_bytes=peak_memory_bytes(baseline_unshard, device),
                         note="torch.cat + index_select"))  # fmt: skip
    return rows
