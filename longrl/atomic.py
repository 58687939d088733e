"""Writing a file so that readers never see half of it: a temporary file beside the target, flushed to disk,
then renamed over it (`os.replace` is atomic within a folder). A failed write leaves the old file as it was
and no temporary file behind.

    write_text_atomic(run / "summary.json", json.dumps(summary, indent=2) + "\\n")
    n = write_atomic(path, lambda f: sum(f.write(line) > 0 for line in lines))   # streamed content
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

T = TypeVar("T")


def write_atomic(path: str | os.PathLike, write: Callable[[TextIO], T]) -> T:
    """Call `write` with a UTF-8 text file open beside `path`, then put that file in `path`'s place;
    returns what `write` returned."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`Path(path).write_text(text, encoding="utf-8")`, atomically (see the module docstring)."""
    write_atomic(path, lambda f: f.write(text))
