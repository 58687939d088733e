"""One benchmark question as the eval runner consumes it: a validated `Example` plus what scoring needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longrl.data.schema import Example
from longrl.rl.rewards import ANSWER_KINDS, MULTIPLE_CHOICE

# Duration buckets. Video-MME ships its own (short < 2 min, medium 4-15 min, long 30-60 min); other benchmarks
# are bucketed from the probed duration with the same names and the gaps closed: < 2 min, 2-15 min, > 15 min.
DURATION_BUCKETS = ("short", "medium", "long")
UNKNOWN = "unknown"
_SHORT_MAX_S = 120.0
_MEDIUM_MAX_S = 900.0


@dataclass(frozen=True)
class EvalItem:
    """One question: `example` (question, options, gold answer, category, video path) and benchmark extras.

    duration: the benchmark's own duration bucket ("short" / "medium" / "long" for Video-MME), None when the
    benchmark has none (the runner then buckets by the probed video duration).
    subtitles: the .srt file to insert for this question, None for no subtitles.
    answer_kind: "multiple_choice" or "open_ended" (how the response is scored).
    """

    example: Example
    duration: str | None = None
    subtitles: Path | None = None
    answer_kind: str = MULTIPLE_CHOICE

    def __post_init__(self) -> None:
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {self.answer_kind!r}")

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def category(self) -> str:
        return self.example.category or UNKNOWN


def duration_bucket(duration_s: float | None) -> str:
    """ "short" (< 2 min), "medium" (2-15 min), "long" (> 15 min), or "unknown" when the duration is None."""
    if duration_s is None:
        return UNKNOWN
    if duration_s < _SHORT_MAX_S:
        return "short"
    return "medium" if duration_s <= _MEDIUM_MAX_S else "long"
