"""What every stage shares during a run: the output folder, its record logs, rejections, backends, progress.

Rejections live in `rejected.jsonl`, one line per (stage, id): {"stage", "id", "reason", "detail"}. An item
rejected for a reason in `RETRY_REASONS` (the backend failed after all its retries) is tried again by the
next run; every other rejection is final (the item counts as done). An item that succeeds later loses its
rejection line when the stage ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from longrl.data.generate.config import BackendSpec, GenerateConfig
from longrl.data.generate.records import REJECTED_FILE, STAGE_FILES
from longrl.data.generate.store import RecordLog

T = TypeVar("T")
R = TypeVar("R")

RETRY_REASONS = ("backend_error",)


def _rejection_key(record: dict[str, Any]) -> Any:
    stage, rid = record.get("stage"), record.get("id")
    return f"{stage}\t{rid}" if isinstance(stage, str) and isinstance(rid, str) else None


@dataclass
class StageStats:
    """What one stage did in this run (the summary table's row)."""

    name: str
    total: int = 0  # items the stage is responsible for
    skipped: int = 0  # already done by an earlier run
    done: int = 0  # finished by this run
    rejected: int = 0  # rejected by this run
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)  # rejection reasons of this run
    counts: dict[str, int] = field(default_factory=dict)  # other outcomes worth a line (e.g. repaired)
    notes: list[str] = field(default_factory=list)

    def count_rejection(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class RunContext:
    """Output folder state for one run. Logs open on first use and close with `close()`."""

    def __init__(self, cfg: GenerateConfig, video_root: Path, progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.out = cfg.out
        self.video_root = video_root
        self.progress = progress
        self._logs: dict[str, RecordLog] = {}
        self.rejected = RecordLog.open(self.out / REJECTED_FILE, key_of=_rejection_key)
        self._backends: dict[str, Any] = {}
        self._backend_lock = threading.Lock()

    # ---- record logs -------------------------------------------------------------------------------------------
    def log(self, stage: str) -> RecordLog:
        """The record log of `stage` (opened, torn tail dropped, on first use)."""
        if stage not in self._logs:
            self._logs[stage] = RecordLog.open(self.out / STAGE_FILES[stage])
        return self._logs[stage]

    def rejection(self, stage: str, rid: str) -> dict[str, Any] | None:
        return self.rejected.get(f"{stage}\t{rid}")

    def is_done(self, stage: str, rid: str) -> bool:
        """True when `rid` has a record, or a final rejection, in `stage`."""
        if rid in self.log(stage):
            return True
        rejection = self.rejection(stage, rid)
        return rejection is not None and rejection.get("reason") not in RETRY_REASONS

    def reject(self, stats: StageStats, rid: str, reason: str, detail: str) -> None:
        """Record that `rid` failed `stats.name` (one line, flushed) and count it."""
        detail = " ".join(str(detail).split())[:500]
        self.rejected.append({"stage": stats.name, "id": rid, "reason": reason, "detail": detail})
        stats.count_rejection(reason)

    def finish_stage(self, stage: str) -> None:
        """Compact the stage's log (sorted by id) and drop the rejections of ids that have a record by now."""
        records = self.log(stage)
        records.compact(order=lambda r: r["id"])
        stale = [
            key for key, r in self.rejected.records.items() if r["stage"] == stage and r["id"] in records
        ]
        for key in stale:
            self.rejected.discard(key)
        self.rejected.compact()

    def rejections(self, stage: str) -> list[dict[str, Any]]:
        return [r for r in self.rejected.values() if r["stage"] == stage]

    # ---- backends ----------------------------------------------------------------------------------------------
    def backend(self, role: str) -> Any:
        """The chat backend of `role` ("captioner" or "reasoner"), built on first use (one per spec)."""
        spec: BackendSpec = getattr(self.cfg, role)
        with self._backend_lock:
            if spec not in self._backends:
                from longrl.llm import make_backend

                self._backends[spec] = make_backend(
                    spec.kind,
                    model=spec.model,
                    base_url=spec.base_url,
                    api_key_env=self.cfg.api_key_env,
                    timeout_s=self.cfg.timeout_s,
                    retries=self.cfg.retries,
                    backoff_s=self.cfg.backoff_s,
                    device=resolved_device(self.cfg.device),
                    dtype=resolved_dtype(self.cfg.dtype, self.cfg.device),
                )
            return self._backends[spec]

    def backend_names(self) -> dict[str, str]:
        names = {}
        for role in ("captioner", "reasoner"):
            spec = getattr(self.cfg, role)
            if spec is not None and spec in self._backends:
                names[role] = self._backends[spec].name
            elif spec is not None:
                names[role] = f"{spec.kind}:{spec.model}"
        return names

    # ---- progress ----------------------------------------------------------------------------------------------
    @contextmanager
    def task(self, stage: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar for `stage` (when the run shows progress); yields advance(n)."""
        if self.progress is None:
            yield lambda n=1: None
            return
        task_id = self.progress.add_task(stage, total=total)
        yield lambda n=1: self.progress.advance(task_id, n)

    def close(self) -> None:
        for records in self._logs.values():
            records.close()
        self.rejected.close()
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()


def make_progress(console) -> Progress:
    """Per-stage progress bars (stage name, bar, done/total, elapsed)."""
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def resolved_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; other names pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolved_dtype(dtype: str, device: str) -> str:
    """ "auto" -> bfloat16 on a GPU, float32 on the CPU; other names pass through."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if resolved_device(device).startswith("cuda") else "float32"


def run_bounded(
    items: Iterable[T],
    work: Callable[[T], R],
    on_done: Callable[[T, R], None],
    concurrency: int,
) -> None:
    """Run `work(item)` on `concurrency` threads, calling `on_done(item, result)` here as each finishes.

    Items are drawn from the iterable lazily (at most 2 x concurrency in flight), so a generator that decodes
    video frames holds only a few clips' frames at a time. `work` reports per-item failures in its result;
    an exception it raises is fatal and is re-raised here once the running items have stopped.
    """
    iterator = iter(items)
    limit = max(1, 2 * concurrency)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate") as pool:
        pending: dict[Future, T] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    item = next(iterator, _END)
                    if item is _END:
                        exhausted = True
                        break
                    pending[pool.submit(work, item)] = item
                if not pending:
                    return
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = pending.pop(future)
                    on_done(item, future.result())
        finally:
            for future in pending:
                future.cancel()


_END: Any = object()
