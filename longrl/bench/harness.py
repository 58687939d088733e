"""Timing and memory measurement for `longrl bench`: median of repeated runs after warm-up, peak memory,
and the device's copy bandwidth measured in the same run (the yardstick for memory-bound kernels)."""

from __future__ import annotations

import ctypes
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class BenchRow:
    """One measured implementation of one op at one size."""

    op: str
    impl: str  # e.g. "cpp", "cuda", "triton", "torch-baseline"
    shape: str
    dtype: str
    device: str
    median_ms: float
    bytes_moved: int | None = None  # minimum bytes the op must read + write
    gbps: float | None = None
    pct_copy_bw: float | None = None
    peak_mem_mb: float | None = None
    speedup: float | None = None  # baseline median / this median
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, reps: int = 7) -> float:
    """Median wall time of fn() in seconds over `reps` runs after `warmup` runs (synchronizing on CUDA)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


# glibc malloc tunables (mallopt parameter numbers) and the values its dynamic mmap threshold settles at on
# 64-bit Linux after large frees (DEFAULT_MMAP_THRESHOLD_MAX = 32 MiB; the trim threshold follows at twice it).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MEASURE = (1 << 20, 1 << 20)
_STEADY = (32 << 20, 64 << 20)


def _set_malloc_thresholds(mmap_bytes: int, trim_bytes: int, *, release_free: bool = False) -> None:
    """Set glibc's mmap/trim thresholds for this process; with release_free, also hand the heap's free pages
    back to the OS (malloc_trim), so reusing a freed block counts as new resident memory. No-op without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
        if release_free:
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory fn() needs at its peak beyond what was allocated before it ran.

    CUDA: the caching allocator's peak. CPU (Linux): the process's resident-set high-water mark, reset through
    /proc/self/clear_refs just before the call. None where neither is available.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    # While measuring, every block >= 1 MiB is its own mapping, returned to the OS when freed, and the heap's free
    # pages are released first: otherwise glibc reuses already-resident heap for blocks up to 32 MiB and the RSS
    # peak reads 0 after warm-up. Afterwards
    # the thresholds go to the values glibc's dynamic threshold settles at, so timings keep seeing the steady
    # state of a long-running process (no page faults on every allocation).
    _set_malloc_thresholds(*_MEASURE, release_free=True)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_bytes("VmRSS")
        fn()
        return max(0, _proc_status_bytes("VmHWM") - base)
    except OSError:
        return None
    finally:
        _set_malloc_thresholds(*_STEADY)


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 256 << 20) -> float:
    """Achieved GB/s (read + write) of a plain device-to-device tensor copy of `nbytes`."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device, warmup=2, reps=7)
    return 2 * nbytes / seconds / 1e9


def make_row(
    op: str,
    impl: str,
    shape: str,
    dtype: torch.dtype | str,
    device: torch.device,
    seconds: float,
    *,
    bytes_moved: int | None = None,
    copy_gbps: float | None = None,
    peak_bytes: int | None = None,
    baseline_seconds: float | None = None,
    note: str = "",
) -> BenchRow:
    """Build a BenchRow, deriving GB/s, % of copy bandwidth and speedup from the measurements."""
    gbps = bytes_moved / seconds / 1e9 if bytes_moved else None
    return BenchRow(
        op=op,
        impl=impl,
        shape=shape,
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        median_ms=seconds * 1e3,
        bytes_moved=bytes_moved,
        gbps=gbps,
        pct_copy_bw=100.0 * gbps / copy_gbps if gbps and copy_gbps else None,
        peak_mem_mb=peak_bytes / 2**20 if peak_bytes is not None else None,
        speedup=baseline_seconds / seconds if baseline_seconds else None,
        note=note,
    )


def device_name(device: torch.device) -> str:
    """A readable name of the device a benchmark ran on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def report_header(benchmark: str, device: torch.device, quick: bool) -> dict:
    """The metadata every benchmark report starts with: what ran, when, where, on which torch."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "quick": quick,
    }
