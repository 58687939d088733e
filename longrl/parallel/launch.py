"""Run a function under N local processes with a torchrun-style environment (tests and the CPU demo).

Each process gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, calls fn(*args) and sends back
its pickled result. A failure in any rank is re-raised in the caller with that rank's traceback; a hang is
ended by the timeout (all processes are killed) instead of blocking forever.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any


class RankFailed(RuntimeError):
    """A rank raised or died; the message carries its traceback or exit code."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(
    fn: Callable[..., Any], args: tuple, rank: int, nprocs: int, port: int, threads: int, results: mp.Queue
):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    try:
        import torch

        torch.set_num_threads(threads)
        value = fn(*args)
        payload = ("ok", pickle.dumps(value))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        payload = ("error", traceback.format_exc())
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    results.put((rank, *payload))


def run_local(fn: Callable[..., Any], nprocs: int, *args: Any, timeout_s: float = 300.0,
              threads_per_rank: int | None = None) -> list[Any]:  # fmt: skip
    """Run fn(*args) in `nprocs` fresh processes (spawned) forming one world; return the results in rank order.

    fn must be importable by name (a module-level function) and its result picklable. Each process uses
    `threads_per_rank` torch threads (default: cores / nprocs, at least 1). Raises RankFailed with the
    failing rank's traceback, or TimeoutError naming the ranks that had not finished after `timeout_s`.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // nprocs)
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, args, r, nprocs, port, threads, results), daemon=True)
        for r in range(nprocs)
    ]
    for p in procs:
        p.start()
    collected: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < nprocs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(nprocs)) - set(collected))
                raise TimeoutError(f"ranks {missing} of {nprocs} did not finish within {timeout_s:.0f} s")
            try:
                rank, status, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if r not in collected and p.exitcode not in (None, 0)]
                if dead:
                    # Give a dying rank's own report a moment to arrive before blaming the exit code.
                    try:
                        rank, status, payload = results.get(timeout=2.0)
                    except queue.Empty:
                        raise RankFailed(
                            f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}"
                        ) from None
                else:
                    continue
            if status == "error":
                raise RankFailed(f"rank {rank} of {nprocs} failed:\n{payload}")
            collected[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=5)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return [collected[r] for r in range(nprocs)]
