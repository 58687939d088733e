"""Crash-safe record files: JSONL logs that a killed run can continue, and atomic whole-file writes.

Each stage appends its records (JSON objects with an "id") to one JSONL file as they are made: a record is
written as one whole line and flushed at once, so after a kill (SIGKILL included) the file holds every
finished record and at most one torn last line. `RecordLog.open` drops that torn tail (truncating the file to
its last newline), reads the records that are there, and keeps the last one for an id that appears twice
(a record written again replaces the earlier one). When a stage ends, `compact()` rewrites the log with one
line per id, in the stage's order, through a temporary file and `os.replace`, so a reader never sees half
a file.

Not thread-safe for writers in different processes: the pipeline holds `OutputLock` on the output folder.
Within one process `append` may be called from several threads (one lock per log).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from longrl.atomic import write_atomic, write_text_atomic
from longrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False, allow_nan=False)


def _drop_torn_tail(path: Path) -> int:
    """Truncate `path` after its last newline (a line cut short by a kill); returns the bytes dropped."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        # Walk back in blocks until a newline is found (the torn tail is at most one record long).
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
        return size - keep


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, skipping blank lines; DataError for a line that is not an object."""
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not a JSON line ({err.msg}); the file was edited or damaged; "
                    "remove that line to continue"
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line")
            yield record


KeyOf = Callable[[dict[str, Any]], Any]


def _by_id(record: dict[str, Any]) -> Any:
    return record.get("id")


class RecordLog:
    """An append-only JSONL file of records keyed by `key_of(record)` (default: the "id" field), reopened
    where a run stopped.

    records: key -> the latest record read or appended (insertion order = first appearance).
    """

    def __init__(self, path: Path, key_of: KeyOf = _by_id) -> None:
        self.path = Path(path)
        self.key_of = key_of
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._file = None

    @classmethod
    def open(cls, path: str | os.PathLike, key_of: KeyOf = _by_id) -> RecordLog:
        """Open (creating when absent) the log at `path`, drop a torn last line and read every record."""
        store = cls(Path(path), key_of)
        if store.path.exists():
            if not store.path.is_file():
                raise ConfigError(f"{store.path} is not a file; it is in the way of the pipeline's output")
            store.dropped_bytes = _drop_torn_tail(store.path)
            if store.dropped_bytes:
                log.info("%s: dropped a torn last line (%d bytes)", store.path, store.dropped_bytes)
            for record in read_jsonl(store.path):
                rid = key_of(record)
                if not isinstance(rid, str):
                    raise DataError(f"{store.path}: a record without a string id: {_dumps(record)[:120]}")
                store.records[rid] = record
        store._file = store.path.open("a", encoding="utf-8")
        return store

    def __contains__(self, rid: str) -> bool:
        return rid in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, rid: str) -> dict[str, Any] | None:
        return self.records.get(rid)

    def values(self) -> list[dict[str, Any]]:
        return list(self.records.values())

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one line and flush it (the OS has it even if this process is killed next)."""
        rid = self.key_of(record)
        if not isinstance(rid, str):
            raise ValueError(f"record needs a string id: {record!r:.120}")
        line = _dumps(record) + "\n"
        with self._lock:
            if self._file is None:
                raise ValueError(f"{self.path}: the log is closed")
            self._file.write(line)
            self._file.flush()
            self.records[rid] = record

    def discard(self, rid: str) -> None:
        """Forget the record `rid`; the file loses it at the next `compact`."""
        with self._lock:
            self.records.pop(rid, None)

    def compact(self, order: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """Rewrite the file with one line per id (sorted by `order`, else first appearance), atomically."""
        with self._lock:
            records = list(self.records.values())
            if order is not None:
                records.sort(key=order)
            if self._file is not None:
                self._file.close()
            write_jsonl_atomic(self.path, records)
            self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL in `path`'s place atomically (`longrl.atomic`); returns how many."""

    def write(f: TextIO) -> int:
        n = 0
        for record in records:
            f.write(_dumps(record) + "\n")
            n += 1
        return n

    return write_atomic(path, write)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as indented JSON in `path`'s place atomically (`longrl.atomic`)."""
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's value; DataError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read it as JSON ({err}); was it edited by hand?") from None


class OutputLock:
    """An exclusive lock on the output folder (`.lock` inside it), so two runs never write one folder.

    The kernel releases it when the process dies, killed or not: a stale lock never blocks a restart.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"another generate-data run is writing {self.path.parent}; wait for it or use another --out"
                ) from None
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
