"""Answer dataset questions with a rollout engine, k samples each, in batches, as the answers come.

Shared by `longrl eval` and the filter stage of `longrl generate-data`: both stream `Answered` records to a
file as they arrive (so a killed run loses at most one batch) and skip rows whose video cannot be decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from longrl.rollout.base import RolloutEngine, RolloutResult, SamplingParams
from longrl.rollout.prompts import VideoSource, encode_videos, rollout_batch_for

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.base import ModelAdapter


@dataclass
class Answered:
    """One question's k sampled responses (`results`, len = params.n), or why it has none (`error`)."""

    example: Example
    results: list[RolloutResult] = field(default_factory=list)
    error: str | None = None

    @property
    def texts(self) -> list[str]:
        return [r.text or "" for r in self.results]


def answer_examples(
    adapter: ModelAdapter,
    tokenizer,
    engine: RolloutEngine,
    examples: Sequence[Example],
    source: VideoSource,
    params: SamplingParams,
    *,
    batch_size: int = 8,
    with_timestamps: bool = False,
) -> Iterator[Answered]:
    """Yield one `Answered` per example, in order, `batch_size` prompts per `engine.generate` call.

    Each distinct video of a batch is encoded once (cached in `source.store`). An example whose video fails
    to decode is yielded with `error` set and no results. A collective over `source.state`'s sp group (the
    vision encode): every rank of the group must iterate the same examples.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        encoded = encode_videos(adapter, [ex.video for ex in chunk], source)
        ok = [ex for ex in chunk if ex.video in encoded.embeddings]
        results: list[RolloutResult] = []
        if ok:
            batch = rollout_batch_for(
                adapter,
                tokenizer,
                ok,
                [encoded.embeddings[ex.video] for ex in ok],
                with_timestamps=with_timestamps,
            )
            results = engine.generate(batch, params)
        by_id = {id(ex): results[i * params.n : (i + 1) * params.n] for i, ex in enumerate(ok)}
        for ex in chunk:
            if id(ex) in by_id:
                yield Answered(ex, by_id[id(ex)])
            else:
                yield Answered(ex, error=encoded.failed.get(ex.video, "video could not be encoded"))
