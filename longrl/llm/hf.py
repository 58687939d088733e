"""The `hf` chat backend: a local model folder through longrl's model layer, decoded by `HFEngine`.

Prompt: the messages in the Qwen chat layout of the model folders longrl makes and reads (the tokenizer's
chat template in `longrl.models.tokenizer`):

    <|im_start|>system\\n{system}<|im_end|>\\n            ("You are a helpful assistant." when none is given)
    <|im_start|>user\\n<|vision_start|><|video_pad|> x n<|vision_end|>{text}<|im_end|>\\n
    <|im_start|>assistant\\n                               (the reply is generated from here)

Images: the images of one message are the frames of one short video, in order, sampled at `frame_fps`
frames per second (Qwen2.5-VL places video tokens in time with it); they are preprocessed and encoded by the
adapter (`preprocess_videos`, `encode_video`) and take the place of the message's first image part. Text is
encoded literally: a special-token string in a message cannot end a turn or eat a video embedding.

The backend holds one model; a lock runs one request at a time (the pipeline's worker threads queue up).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from longrl.errors import ConfigError, VideoError
from longrl.llm.base import (
    BackendConfigError,
    BackendRequestError,
    ChatMessage,
    check_messages,
    message_image_urls,
)
from longrl.llm.images import data_url_to_frame
from longrl.models.loading import load_model
from longrl.models.tokenizer import IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START
from longrl.rollout.base import RolloutBatch, SamplingParams
from longrl.rollout.hf import HFEngine

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # what the Qwen chat template adds when none is given


class HFChatBackend:
    """Chat with a local HF model folder (any family `longrl.models.load_model` reads)."""

    def __init__(
        self, model: str | Path, *, device: str = "cpu", dtype: str = "float32", frame_fps: float = 1.0
    ) -> None:
        if not frame_fps > 0:
            raise BackendConfigError(f"frame_fps must be > 0, got {frame_fps}")
        self.adapter, self.tokenizer, self.video_config = load_model(model, dtype=dtype, device=device)
        self.name = f"hf:{Path(model).name}"
        self.device = str(self.adapter.device)
        self.frame_fps = float(frame_fps)
        self.engine = HFEngine(self.adapter, self.tokenizer)
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"HFChatBackend(name={self.name!r}, device={self.device!r})"

    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """The generated reply (special tokens removed). temperature 0 is greedy."""
        check_messages(messages)
        try:
            params = SamplingParams(
                n=1, max_new_tokens=int(max_tokens), temperature=float(temperature), seed=seed
            )
        except ConfigError as error:
            raise BackendRequestError(f"{self.name}: {error}") from None
        videos = [_message_frames(message) for message in messages]
        with self._lock:
            if self._closed:
                raise BackendRequestError(f"{self.name}: the backend is closed")
            with torch.no_grad():
                embeds, grids, seconds = self._encode([frames for frames in videos if frames is not None])
                ids = self.prompt_ids(messages, [int(len(e)) for e in embeds])
                input_ids = torch.tensor([ids], dtype=torch.long)
                mask = torch.ones_like(input_ids)
                grid = torch.tensor(grids, dtype=torch.long) if grids else None
                second = torch.tensor(seconds, dtype=torch.float32) if seconds else None
                inputs = self.adapter.build_inputs(input_ids, mask, embeds, grid, second)
                batch = RolloutBatch(input_ids, mask, embeds, grid, second, inputs=inputs)
                (result,) = self.engine.generate(batch, params)
        return result.text or ""

    def close(self) -> None:
        """Drop the model (its memory is freed once nothing else holds it)."""
        with self._lock:
            self._closed = True
            self.engine = None
            self.adapter = None

    def prompt_ids(self, messages: Sequence[ChatMessage], video_tokens: Sequence[int]) -> list[int]:
        """Token ids of the prompt (layout in the module docstring); video_tokens[i] is the pad count of the
        i-th message that has images."""
        tok = self.tokenizer
        start, pad, end = tok.convert_tokens_to_ids([VISION_START, VIDEO_PAD, VISION_END])
        pads = iter(video_tokens)
        ids: list[int] = []
        if messages[0]["role"] != "system":
            ids += _encode(tok, f"{IM_START}system\n")
            ids += _encode(tok, DEFAULT_SYSTEM_PROMPT, literal=True)
            ids += _encode(tok, f"{IM_END}\n")
        for message in messages:
            ids += _encode(tok, f"{IM_START}{message['role']}\n")
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            video_placed = False
            for part in parts:
                if part["type"] == "text":
                    ids += _encode(tok, part["text"], literal=True)
                elif not video_placed:  # the message's images are one video, where its first image is
                    ids += [start] + [pad] * next(pads) + [end]
                    video_placed = True
            ids += _encode(tok, f"{IM_END}\n")
        return ids + _encode(tok, f"{IM_START}assistant\n")

    def _encode(
        self, videos: list[np.ndarray]
    ) -> tuple[list[torch.Tensor], list[tuple[int, int, int]], list[float]]:
        """Vision embeddings [n_i, H] of each video (uint8 [T, H, W, 3]), their grids and seconds per
        temporal patch."""
        if not videos:
            return [], [], []
        try:
            pixels = self.adapter.preprocess_videos(
                videos, [self.frame_fps] * len(videos), self.video_config, self.adapter.device
            )
        except (ValueError, VideoError) as error:  # frames the preprocessing cannot take (odd aspect, ...)
            raise BackendRequestError(f"{self.name}: cannot use these images: {error}") from None
        embeds = self.adapter.encode_video(pixels.pixel_values_videos, pixels.video_grid_thw)
        grids = [tuple(int(x) for x in row) for row in pixels.video_grid_thw.tolist()]
        return list(embeds), grids, [float(s) for s in pixels.second_per_grid_ts.tolist()]


def _message_frames(message: ChatMessage) -> np.ndarray | None:
    """The images of a message as one video, uint8 [T, H, W, 3] (None when it has none)."""
    urls = message_image_urls(message)
    if not urls:
        return None
    frames = [data_url_to_frame(url) for url in urls]
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise BackendRequestError(
            f"the images of one message are frames of one video and must share a size, got {sorted(sizes)}"
        )
    return np.stack(frames)


def _encode(tokenizer, text: str, *, literal: bool = False) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=literal))
