"""Datasets: the row schema (released LongVideo-Reason and plain multiple choice) and loading data files.

Nothing here imports torch; loading a 100k-row file costs a JSON parse and a stat per video.
"""

from longrl.data.dataset import BadRow, LoadReport, load_examples, write_released_jsonl
from longrl.data.schema import (
    BAD_ROW_REASONS,
    LETTERS,
    Example,
    example_to_released_row,
    parse_problem,
    released_row,
    resolve_answer,
)

__all__ = [
    "BAD_ROW_REASONS",
    "LETTERS",
    "BadRow",
    "Example",
    "LoadReport",
    "example_to_released_row",
    "load_examples",
    "parse_problem",
    "released_row",
    "resolve_answer",
    "write_released_jsonl",
]
