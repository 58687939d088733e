"""`predictions.jsonl`: one JSON record per answered item, appended and flushed batch by batch (resumable).

A run killed mid-batch leaves at most a cut-off last line. On the next run `load_predictions` keeps every
complete record with an id it has not seen yet and drops the rest: a broken line, a repeated id, and (so that
a video fixed since is tried again) records whose video failed. When it dropped anything, the file is
rewritten (temp file + rename) with exactly the kept records before anything is appended, so the file never
holds an item twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from longrl.atomic import write_atomic
from longrl.errors import DataError


def load_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """id -> record of the complete, successful records in `path` ({} when it does not exist); the file is
    rewritten without the dropped lines when there were any. DataError when it cannot be read."""
    if not path.exists():
        return {}
    kept: dict[str, dict[str, Any]] = {}
    dropped = 0
    try:
        with path.open("r", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    dropped += 1
                    continue
                rid = record.get("id") if isinstance(record, dict) else None
                if not isinstance(rid, str) or rid in kept or record.get("error"):
                    dropped += 1
                    continue
                kept[rid] = record
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path}: cannot read earlier predictions ({err}); move it away to start over"
        ) from None
    if dropped or not _ends_with_newline(path):
        write_jsonl_atomic(path, kept.values())
    return kept


def _ends_with_newline(path: Path) -> bool:
    # A complete last record cut before its newline would glue onto the next appended one.
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def write_jsonl_atomic(path: Path, records) -> None:
    """Write records as JSONL in `path`'s place atomically (`longrl.atomic`)."""

    def write(f: TextIO) -> None:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    write_atomic(path, write)


class PredictionWriter:
    """Appends records to a predictions file; every `write` call ends flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")

    def write(self, records) -> None:
        for record in records:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
