"""Examples -> cached video embeddings -> a `RolloutBatch`: the one path from dataset rows to engine prompts.

The RL trainer, `longrl eval` and the filter stage of `longrl generate-data` all ask the same thing: "answer
these questions about these videos". This module does the part they share: encode each distinct video once
(through the embedding store, sharded over the sp group when there is one) and build left-padded prompts in
the format of `longrl.models.prompt`. A video that cannot be decoded is reported per video, not raised, so
callers can skip the rows that need it and carry on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrl.errors import VideoError
from longrl.rollout.base import RolloutBatch

if TYPE_CHECKING:
    from longrl.data.schema import Example
    from longrl.models.base import ModelAdapter
    from longrl.models.embedding_store import EmbeddingStore, VideoEmbedding
    from longrl.parallel.groups import ParallelState
    from longrl.video.sampling import SamplingConfig


@dataclass
class VideoSource:
    """How videos become embeddings: frame sampling, the model's pixel layout, the decoder backend, the cache.

    sampling: frames per video (`SamplingConfig(num_frames=64)` or an fps rule); video_config: the model's
    `QwenVideoConfig` (`LoadedModel.video_config`); store: the embedding cache (None: encode every time);
    state: the parallel state whose sp group shards the vision tower (None: this process alone).
    """

    sampling: SamplingConfig
    video_config: Any
    backend: str | None = None
    store: EmbeddingStore | None = None
    state: ParallelState | None = None
    isolate: bool = True


@dataclass
class EncodedVideos:
    """Embeddings of distinct video paths, and the paths that failed with the one-line reason."""

    embeddings: dict[Path, VideoEmbedding] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)


def encode_videos(adapter: ModelAdapter, paths: Sequence[str | Path], source: VideoSource) -> EncodedVideos:
    """Encode each distinct path once, in first-seen order (a collective over `source.state.sp_group`).

    Every rank of the sp group must call this with the same paths. Decoding is deterministic, so a video
    that fails fails on every rank alike and the group stays in step.
    """
    from longrl.parallel.vision_shard import encode_video_file_sharded

    group = source.state.sp_group if source.state is not None else None
    out = EncodedVideos()
    for path in dict.fromkeys(Path(p) for p in paths):
        try:
            out.embeddings[path] = encode_video_file_sharded(
                adapter,
                source.store,
                path,
                source.sampling,
                source.video_config,
                group,
                backend=source.backend,
                isolate=source.isolate,
            )
        except VideoError as err:
            out.failed[path] = str(err)
    return out


def rollout_batch_for(
    adapter: ModelAdapter,
    tokenizer,
    examples: Sequence[Example],
    videos: Sequence[VideoEmbedding],
    *,
    with_timestamps: bool = False,
) -> RolloutBatch:
    """Left-padded prompts (video + question + lettered options) for `examples`, videos[i] being example i's."""
    from longrl.models.video_inputs import build_video_batch

    batch = build_video_batch(
        adapter,
        tokenizer,
        videos,
        [ex.question for ex in examples],
        [ex.options or None for ex in examples],
        side="left",
        with_timestamps=with_timestamps,
    )
    return RolloutBatch.from_video_batch(batch, videos)
