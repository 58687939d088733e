"""Bench group "embedding_cache": EmbeddingCache gather/put against a plain dict of tensors.

Workload: N video embeddings of ~T tokens x 3584 (Qwen2.5-VL-7B hidden size) bf16, gathered into one batch
as a rollout/prefill would. Baselines: `torch.cat` of the dict's tensors (packed), `pad_sequence` (padded),
`tensor.clone()` into the dict (put). On CUDA 8 x ~16k tokens (~0.94 GB per batch); on CPU a smaller
8 x ~1k tokens (~59 MB), stated in the shape column.

On the CPU a fresh result of 32 MiB or more gets transparent huge pages from the cache (where Linux allows
it) and the baselines' results do not: most of a fresh CPU gather is page faults, so the packed and padded
rows there compare allocation policies as much as copies; the `_out` rows compare the copies alone.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from longrl._ops.embedding_cache import HUGE_PAGE_OUTPUT_BYTES
from longrl.bench.harness import BenchRow, make_row, peak_memory_bytes, time_fn
from longrl.ops import EmbeddingCache

HIDDEN = 3584
DTYPE = torch.bfloat16


def _sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    """(entries, tokens of the longest entry)."""
    if device.type == "cuda":
        return (4, 4096) if quick else (8, 16384)
    return (4, 256) if quick else (8, 1024)


def run(device: torch.device, quick: bool, copy_gbps: float) -> list[BenchRow]:
    n, tokens = _sizes(device, quick)
    # Lengths differ a little (odd, partial last pages), as real videos do.
    lengths = [tokens - 17 * i for i in range(n)]
    gen = torch.Generator(device=device).manual_seed(0)
    entries = {
        f"video-{i}": torch.randn(rows, HIDDEN, device=device, generator=gen).to(DTYPE)
        for i, rows in enumerate(lengths)
    }
    keys = list(entries)
    row_bytes = HIDDEN * entries[keys[0]].element_size()
    total_bytes = sum(lengths) * row_bytes
    shape = f"{n} x {min(lengths)}..{tokens} x {HIDDEN}" + (" (CPU size)" if device.type == "cpu" else "")
    reps = 5 if quick else 7

    # Room for every entry plus a page of slack per entry (pages are 1 MiB by default).
    cache = EmbeddingCache(
        total_bytes + n * (1 << 20) + (8 << 20), hidden_size=HIDDEN, dtype=DTYPE, device=device
    )
    baseline: dict[str, torch.Tensor] = {}
    for k, t in entries.items():
        cache.put(k, t)
        baseline[k] = t.clone()

    def measure(
        op: str, impl: str, fn, bytes_moved: int, baseline_seconds: float | None = None, note: str = ""
    ):
        seconds = time_fn(fn, device, warmup=2, reps=reps)
        row = make_row(
            op, impl, shape, DTYPE, device, seconds, bytes_moved=bytes_moved, copy_gbps=copy_gbps,
            peak_bytes=peak_memory_bytes(fn, device), baseline_seconds=baseline_seconds, note=note,
        )  # fmt: skip
        return row, seconds

    rows: list[BenchRow] = []
    huge = " (huge pages)" if device.type == "cpu" and total_bytes >= HUGE_PAGE_OUTPUT_BYTES else ""

    # Packed gather: read every entry once, write it once.
    base_row, base_s = measure(
        "cache_gather_packed", "torch-baseline", lambda: torch.cat([baseline[k] for k in keys]), 2 * total_bytes,
        note="dict of tensors + torch.cat",
    )  # fmt: skip
    row, _ = measure(
        "cache_gather_packed", cache.backend, lambda: cache.get_many(keys), 2 * total_bytes, base_s,
        note=f"paged slab -> one [R, H] tensor, R = sum of lengths{huge}",
    )  # fmt: skip
    rows += [base_row, row]

    # The same into a preallocated output: the copy alone, without allocating (and first-touching) the result.
    buf_base = torch.empty(sum(lengths), HIDDEN, dtype=DTYPE, device=device)
    buf_cache = torch.empty_like(buf_base)
    base_row, base_s = measure(
        "cache_gather_packed_out", "torch-baseline", lambda: torch.cat([baseline[k] for k in keys], out=buf_base),
        2 * total_bytes, note="torch.cat(..., out=)",
    )  # fmt: skip
    row, _ = measure(
        "cache_gather_packed_out", cache.backend, lambda: cache.get_many(keys, out=buf_cache), 2 * total_bytes,
        base_s, note="get_many(..., out=)",
    )  # fmt: skip
    rows += [base_row, row]

    # Padded gather: read every entry, write the whole [N, max_n, H] batch (pad rows included).
    padded_bytes = total_bytes + n * max(lengths) * row_bytes
    base_row, base_s = measure(
        "cache_gather_padded", "torch-baseline",
        lambda: pad_sequence([baseline[k] for k in keys], batch_first=True), padded_bytes,
        note="dict of tensors + pad_sequence",
    )  # fmt: skip
    row, _ = measure(
        "cache_gather_padded", cache.backend, lambda: cache.get_many(keys, padded=True), padded_bytes, base_s,
        note=f"paged slab -> [N, max_n, H], pad rows written by the kernel{huge}",
    )  # fmt: skip
    rows += [base_row, row]

    # Put: replace every entry (read it, write it into pages); no eviction since the keys already exist.
    def put_dict() -> None:
        for k, t in entries.items():
            baseline[k] = t.clone()

    def put_cache() -> None:
        for k, t in entries.items():
            cache.put(k, t)

    base_row, base_s = measure(
        "cache_put", "torch-baseline", put_dict, 2 * total_bytes, note="dict[k] = t.clone()"
    )
    row, _ = measure(
        "cache_put", cache.backend, put_cache, 2 * total_bytes, base_s, note=f"{n} puts into the slab"
    )
    rows += [base_row, row]
    return rows
