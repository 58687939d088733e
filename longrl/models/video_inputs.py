"""From a video file and a question to decoder inputs: the one path SFT, RL and eval take.

    adapter, tokenizer, video_config = load_model(path)
    store = EmbeddingStore.for_adapter(adapter)
    emb = encode_video_file(adapter, store, "clip.mp4", SamplingConfig(num_frames=16), video_config)
    batch = build_video_batch(adapter, tokenizer, [emb], ["What happens?"], [["a dog", "a cat"]])
    logits = adapter.logits(batch.inputs.inputs_embeds, batch.inputs.position_ids, batch.inputs.attention_mask)

`encode_video_file`: `load_video_pixels` (decode + sample with `longrl.video.load_video`, frames resized by
`adapter.frame_resizer` as they are decoded, then normalize + patchify with `adapter.preprocess_videos`, on
the model's device), vision tower (`adapter.encode_video`), all behind the embedding cache: a hit neither
decodes nor runs the tower. `build_video_batch`: prompt ids (`longrl.models.prompt`) with one video-pad token
per embedding row, then `adapter.build_inputs`. Nothing here is specific to a model family: `video_config`
is whatever the adapter's preprocessing takes (`load_model`'s third value).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from longrl.models.base import ModelAdapter, MultimodalInputs, VideoPixelInputs
from longrl.models.embedding_store import EmbeddingStore, VideoEmbedding, video_key_parts
from longrl.models.prompt import SYSTEM_PROMPT, build_prompt_ids, pad_batch
from longrl.video.decode import DEFAULT_BACKEND
from longrl.video.load import SampledVideo, load_video
from longrl.video.sampling import SamplingConfig


def video_cache_parts(
    adapter: ModelAdapter,
    path: str | os.PathLike,
    sampling: SamplingConfig,
    video_config: Any,
    *,
    backend: str = DEFAULT_BACKEND,
    start_s: float = 0.0,
    end_s: float | None = None,
    content_hash: bool = False,
) -> dict:
    """The embedding-cache key parts of one video span: the file's identity, the sampling (config, span,
    decoder), the preprocessing (the whole video config, e.g. QwenVideoConfig: budgets, patch sizes,
    mean/std, plus the device type, since CPU and GPU resizing differ by a few levels) and the vision
    weights' fingerprint.

    Raises VideoError naming the file when it cannot be stat'ed.
    """
    return video_key_parts(
        path,
        sampling={
            "config": sampling,
            "start_s": float(start_s),
            "end_s": None if end_s is None else float(end_s),
            "backend": backend,
        },
        pixel_budget={"config": video_config, "device": adapter.device.type},
        encoder_fingerprint=adapter.vision_fingerprint(),
        content_hash=content_hash,
    )


def load_video_pixels(
    adapter: ModelAdapter,
    path: str | os.PathLike,
    sampling: SamplingConfig,
    video_config: Any,
    *,
    backend: str = DEFAULT_BACKEND,
    start_s: float = 0.0,
    end_s: float | None = None,
    isolate: bool = True,
) -> tuple[SampledVideo, VideoPixelInputs]:
    """Decode, sample and preprocess the span [start_s, end_s) of the video at `path` for `adapter`, with
    bounded memory: frames are resized (`adapter.frame_resizer`) chunk by chunk as they are decoded, then
    normalized and patchified (`adapter.preprocess_videos`) chunk by chunk on the model's device.

    Returns (the sampled video, whose `frames` are the resized frames; the vision tower's inputs for it:
    pixel_values_videos [t*h*w, C*tp*p*p] float32, video_grid_thw [1, 3], second_per_grid_ts [1]), bit-identical
    to `adapter.preprocess_videos([load_video(...).frames], ...)` on full-size frames. Raises VideoError
    naming the file.
    """
    resizer = adapter.frame_resizer(video_config, adapter.device)
    video = load_video(
        path, sampling, backend, start_s=start_s, end_s=end_s, isolate=isolate, transform=resizer
    )
    pixels = adapter.preprocess_videos(
        [video.frames], [video.sampled_fps], video_config, adapter.device, resized=resizer is not None
    )
    return video, pixels


@dataclass(frozen=True)
class VideoPixels:
    """One preprocessed video: what encoding it needs (and what a sharded encode splits).

    pixel_values_videos: [t*h*w, C*tp*p*p] float32 patches, time-major; grid_thw: (t, h, w) in patches;
    second_per_grid_t: seconds per temporal patch; timestamps: seconds of the sampled frames.
    """

    pixel_values_videos: torch.Tensor
    grid_thw: tuple[int, int, int]
    second_per_grid_t: float = 1.0
    timestamps: tuple[float, ...] = field(default_factory=tuple)


def load_video_file(
    adapter: ModelAdapter,
    path: str | os.PathLike,
    sampling: SamplingConfig,
    video_config: Any,
    *,
    backend: str = DEFAULT_BACKEND,
    start_s: float = 0.0,
    end_s: float | None = None,
    isolate: bool = True,
) -> VideoPixels:
    """`load_video_pixels` for one video, as the VideoPixels record both the plain and the sharded encode use."""
    video, pixels = load_video_pixels(
        adapter, path, sampling, video_config, backend=backend, start_s=start_s, end_s=end_s, isolate=isolate
    )
    return VideoPixels(
        pixels.pixel_values_videos,
        tuple(int(x) for x in pixels.video_grid_thw[0]),
        float(pixels.second_per_grid_ts[0]),
        tuple(float(t) for t in video.timestamps_s),
    )


def encode_pixels(adapter: ModelAdapter, video: VideoPixels) -> VideoEmbedding:
    """Run the vision tower on one preprocessed video, unsharded.

    Returns a VideoEmbedding: embeds [t*h*w // merge**2, H] in the model dtype/device (with its autograd
    graph when the tower is trainable), plus the video's grid_thw, second_per_grid_t and timestamps.
    """
    grid = torch.tensor([video.grid_thw], dtype=torch.int64)
    (embeds,) = adapter.encode_video(video.pixel_values_videos, grid)
    return VideoEmbedding(
        embeds, tuple(video.grid_thw), float(video.second_per_grid_t), tuple(video.timestamps)
    )


def encode_video_file(
    adapter: ModelAdapter,
    store: EmbeddingStore | None,
    path: str | os.PathLike,
    sampling: SamplingConfig,
    video_config: Any,
    *,
    backend: str = DEFAULT_BACKEND,
    start_s: float = 0.0,
    end_s: float | None = None,
    content_hash: bool = False,
    isolate: bool = True,
) -> VideoEmbedding:
    """The vision embedding of the span [start_s, end_s) (default: all) of the video at `path`.

    Returns a VideoEmbedding: embeds [t*h*w // merge**2, H] (store dtype/device; the model's without a
    store), grid_thw (t, h, w) in patches, second_per_grid_t = temporal_patch_size / sampled fps, and the
    decoder timestamps (seconds) of the sampled frames. `store=None` encodes every time. A cache hit (key:
    `video_cache_parts`) returns the stored embedding without decoding or running the vision tower.
    Raises VideoError naming the file for a missing, unreadable or undecodable video.
    """
    parts = video_cache_parts(
        adapter,
        path,
        sampling,
        video_config,
        backend=backend,
        start_s=start_s,
        end_s=end_s,
        content_hash=content_hash,
    )

    def encode() -> VideoEmbedding:
        video = load_video_file(
            adapter,
            path,
            sampling,
            video_config,
            backend=backend,
            start_s=start_s,
            end_s=end_s,
            isolate=isolate,
        )
        return encode_pixels(adapter, video)

    return encode() if store is None else store.get_or_encode(parts, encode)


@dataclass
class VideoBatch:
    """Decoder inputs for B prompts with one video each.

    input_ids: [B, L] int64, padded with the tokenizer's pad id on the chosen side.
    video_grid_thw: [B, 3] int64; second_per_grid_ts: [B] float32 (what HF's forward would take).
    inputs: MultimodalInputs (inputs_embeds [B, L, H], position_ids [3, B, L], attention_mask [B, L],
        rope_deltas [B, 1]) from `adapter.build_inputs`.
    """

    input_ids: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor
    inputs: MultimodalInputs


def build_video_batch(
    adapter: ModelAdapter,
    tokenizer,
    videos: Sequence[VideoEmbedding],
    questions: Sequence[str],
    options: Sequence[Sequence[str] | None] | None = None,
    *,
    side: str = "left",
    with_timestamps: bool = False,
    system_prompt: str = SYSTEM_PROMPT,
) -> VideoBatch:
    """Prompt i = video i + question i + options i (`longrl.models.prompt` format), padded on `side` ("left"
    for generation, "right" for training), turned into decoder inputs.

    with_timestamps adds the line naming the sampled frames' times (Qwen2.5-VL reads time from its 3-D
    positions instead, so it is off by default).
    """
    if len(videos) != len(questions):
        raise ValueError(f"{len(videos)} videos but {len(questions)} questions")
    options = [None] * len(questions) if options is None else list(options)
    if len(options) != len(questions):
        raise ValueError(f"{len(options)} option lists but {len(questions)} questions")
    if any(v.grid_thw is None for v in videos):
        raise ValueError("every video embedding needs its grid_thw to place the video tokens")
    rows = [
        build_prompt_ids(
            tokenizer,
            question,
            opts,
            num_video_tokens=adapter.num_video_tokens(video.grid_thw),
            timestamps=video.timestamps if with_timestamps else None,
            system_prompt=system_prompt,
        )
        for video, question, opts in zip(videos, questions, options, strict=True)
    ]
    input_ids, attention_mask = pad_batch(rows, tokenizer.pad_token_id, side=side)
    grid = torch.tensor([v.grid_thw for v in videos], dtype=torch.long)
    seconds = torch.tensor([v.second_per_grid_t for v in videos], dtype=torch.float32)
    inputs = adapter.build_inputs(input_ids, attention_mask, [v.embeds for v in videos], grid, seconds)
    return VideoBatch(input_ids, grid, seconds, inputs)
