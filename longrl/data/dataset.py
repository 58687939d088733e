"""A data file (JSON list or JSONL, either row form) -> validated Examples plus an account of the bad rows.

    examples, report = load_examples("train.jsonl", video_root="videos/", on_bad_row="skip")
    print(report.summary())   # train.jsonl: kept 98 of 100 rows; skipped 2 (video_missing: 2)

Bad rows are skipped and counted by reason (`LoadReport`), or with on_bad_row="fail" the first one raises
DataError("train.jsonl:7: answer_not_in_options: ..."). A file that cannot be read, is not JSON/JSONL, holds
no rows, or keeps no row at all raises DataError whatever on_bad_row says: a run on zero examples is always
a mistake (pass allow_empty=True where it is not).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from longrl.atomic import write_atomic
from longrl.data.schema import BAD_ROW_REASONS, Example, RowProblem, example_from_row, example_to_released_row
from longrl.errors import ConfigError, DataError

OnBadRow = Literal["skip", "fail"]
ON_BAD_ROW = ("skip", "fail")


@dataclass(frozen=True)
class BadRow:
    """One rejected row: where it is (1-based line for JSONL, 0-based `row[i]` for a JSON list) and why."""

    where: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}: {self.detail}"


@dataclass
class LoadReport:
    """What loading one file did: rows seen, kept, skipped per reason, and the first few bad rows."""

    path: Path
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for the console and the run summary."""
        line = f"{self.path.name}: kept {self.kept} of {self.total} rows"
        if self.skipped:
            parts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
            line += f"; skipped {self.num_skipped} ({parts})"
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the run summary; `skipped` has every reason, zeros included."""
        return {
            "path": str(self.path),
            "total": self.total,
            "kept": self.kept,
            "skipped": {reason: self.skipped.get(reason, 0) for reason in BAD_ROW_REASONS},
            "bad_rows": [{"where": b.where, "reason": b.reason, "detail": b.detail} for b in self.bad_rows],
        }


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    """Yield (where, row index, row) for each row; a row that is not JSON comes as a RowProblem.

    The first non-blank character decides the format: "[" -> one JSON list, else JSONL (blank lines are
    skipped, line numbers count every line). Raises DataError for an unreadable file or a broken JSON list.
    """
    try:
        with path.open("r", encoding="utf-8-sig") as f:
            first = ""
            while not first:
                chunk = f.read(4096)
                if not chunk:
                    return
                first = chunk.lstrip()[:1]
            f.seek(0)
            if first == "[":
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: not valid JSON: {err}") from None
                if not isinstance(rows, list):
                    raise DataError(f"{path}: a JSON data file must hold a list of rows")
                for i, row in enumerate(rows):
                    yield f"row[{i}]", i, row
                return
            index = 0
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row: Any = json.loads(line)
                except json.JSONDecodeError as err:
                    row = RowProblem("invalid_json", f"not a JSON line ({err.msg} at column {err.colno})")
                yield f"line {lineno}", index, row
                index += 1
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the data file: {err.strerror or err}") from None


def _video_root(video_root: str | os.PathLike | None, data_path: Path) -> Path:
    root = Path(video_root) if video_root is not None else data_path.parent
    if not root.is_dir():
        raise DataError(
            f"video root {root} is not a folder; pass --video-root DIR, the folder that the video paths "
            f"in {data_path.name} are relative to"
        )
    return root.resolve()


def load_examples(
    path: str | os.PathLike,
    video_root: str | os.PathLike | None,
    *,
    on_bad_row: OnBadRow = "skip",
    check_video_exists: bool = True,
    allow_empty: bool = False,
    keep_bad_rows: int = 5,
) -> tuple[list[Example], LoadReport]:
    """Read and validate every row of a JSON/JSONL data file, in file order.

    video_root: every row's video must resolve inside it (None = the data file's folder).
    on_bad_row: "skip" counts bad rows in the report; "fail" raises DataError at the first, naming the file,
    the line (JSONL) or row index (JSON list) and the reason, on one line.
    check_video_exists: also require each video to be a readable file (one stat per distinct path).
    allow_empty: return zero examples instead of raising DataError for an empty file or no usable row.
    keep_bad_rows: how many bad rows the report keeps verbatim (all are counted).
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}, got {on_bad_row!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file {path} not found" if not path.exists() else f"data file {path} is not a file"
        )
    root = _video_root(video_root, path)
    report = LoadReport(path=path)
    examples: list[Example] = []
    parsed_any = False
    video_cache: dict = {}  # one resolution per distinct video path in this file
    for where, index, row in read_rows(path):
        report.total += 1
        try:
            if isinstance(row, RowProblem):
                raise row
            parsed_any = True
            example = example_from_row(
                row,
                index=index,
                video_root=root,
                check_video_exists=check_video_exists,
                video_cache=video_cache,
            )
        except RowProblem as problem:
            if on_bad_row == "fail":
                raise DataError(
                    f"{path}:{where.removeprefix('line ')}: {problem.reason}: {_one_line(problem.detail)}"
                ) from None
            report.skipped[problem.reason] += 1
            if len(report.bad_rows) < keep_bad_rows:
                report.bad_rows.append(BadRow(where, problem.reason, _one_line(problem.detail)))
            continue
        examples.append(example)
        report.kept += 1
    if report.total and not parsed_any:
        first = report.bad_rows[0] if report.bad_rows else None
        raise DataError(f"{path}: not JSON or JSONL" + (f" ({first.where}: {first.detail})" if first else ""))
    if not examples and not allow_empty:
        if not report.total:
            raise DataError(f"{path}: no rows (the file is empty)")
        raise DataError(f"{path}: no usable rows; {report.summary()}")
    return examples, report


def write_released_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> int:
    """Write examples as released-schema JSONL (one row a line, UTF-8); returns the number of rows.

    Written to a temporary file beside `path` and renamed, so a reader never sees half a file.
    """

    def write(f: TextIO) -> int:
        n = 0
        for example in examples:
            f.write(json.dumps(example_to_released_row(example), ensure_ascii=False) + "\n")
            n += 1
        return n

    return write_atomic(path, write)
