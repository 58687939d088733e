"""The model adapter interface: what trainers, rollout engines and evaluation need from a VLM.

Everything above `longrl/models/` talks to a model through `ModelAdapter` only, so adding a model family
(Qwen3-VL, LongVILA, ...) is one new file implementing this class plus one line in `registry.py`.

The split mirrors MR-SP: (1) `encode_video` runs the vision tower once per video (results are cached and
shared); (2) `build_inputs` turns token ids + those embeddings into decoder inputs with the family's
position scheme; (3) `forward` / `logits` run the decoder from `inputs_embeds`, so the policy, the reference
model and every rollout see exactly the same inputs.

What else differs between families is here too, so no other file names a family: the preprocessing
settings of a model folder (`processor_config_class`, `video_config_from_folder`) and turning decoded frames
into the vision tower's inputs (`frame_resizer`, `preprocess_videos`).
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn


def num_video_tokens(grid_thw: Sequence[int] | torch.Tensor, merge_size: int = 2) -> int:
    """Video-pad tokens (= vision embeddings) for one video of patch grid (t, h, w): t*h*w // merge_size**2.

    merge_size: the vision tower's spatial merge (2 for Qwen2-VL / Qwen2.5-VL; `ModelAdapter.merge_size`).
    """
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // merge_size**2


class VideoPixelInputs(Protocol):
    """What `ModelAdapter.preprocess_videos` returns (e.g. `longrl.video.QwenVideoInputs`).

    pixel_values_videos: [sum_i t_i*h_i*w_i, C*tp*p*p] float32, all videos' patches concatenated.
    video_grid_thw: [N, 3] int64 patch grid per video. second_per_grid_ts: [N] float32 seconds per temporal
    patch.
    """

    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor


@dataclass
class MultimodalInputs:
    """Decoder inputs for a batch.

    inputs_embeds: [B, L, H] in the model dtype (text embeddings, video embeddings at the video-pad slots).
    position_ids: [3, B, L] int64 (time/height/width rope positions; all three equal on text tokens).
    attention_mask: [B, L] int64, 1 = real token, 0 = padding (left or right).
    rope_deltas: [B, 1] int64 or None: position of the next generated token minus its count of real tokens
        (see `ModelAdapter.decode_position_ids`).
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    rope_deltas: torch.Tensor | None = None


class ModelAdapter(abc.ABC):
    """One loaded VLM behind the interface the rest of longrl uses. Wraps (does not copy) an HF model."""

    # Family name, e.g. "qwen2_5_vl" (which config `model_type` values map to an adapter is in registry.py).
    family: str = ""
    # The family's preprocessing settings of a model folder: a class whose no-argument instance is the family
    # default, with `from_folder(folder)` (classmethod, defaults for what is absent; ModelError for unreadable
    # files), `write(folder)`, and a `video` attribute (the config `preprocess_videos` takes). What
    # `load_model` reads into `adapter.processor_config` and `save_model` writes.
    processor_config_class: ClassVar[type]

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.processor_config = None  # a processor_config_class instance when loaded (see loading.load_model)
        self._fingerprint: tuple[tuple, str] | None = None

    @classmethod
    @abc.abstractmethod
    def hf_model_class(cls) -> type[nn.Module]:
        """The transformers class whose `from_pretrained` loads this family's folders."""

    # ---- video preprocessing ---------------------------------------------------------------------------------
    @classmethod
    def video_config_from_folder(cls, folder: str | os.PathLike) -> Any:
        """The video preprocessing settings of a model folder of this family (what `preprocess_videos` takes;
        family defaults for what the folder does not set). Raises ModelError for unreadable settings files."""
        return cls.processor_config_class.from_folder(folder).video

    def frame_resizer(self, config: Any, device: torch.device | str | None = None) -> Any:
        """A per-frame transform for the decoder (`longrl.video.decode.FrameTransform`) that does the
        family's resizing while frames are decoded, so long videos are never held at full resolution; then
        call `preprocess_videos(..., resized=True)`. None (this default): frames are decoded at full size."""
        return None

    @abc.abstractmethod
    def preprocess_videos(
        self,
        videos: Sequence[torch.Tensor | np.ndarray],
        sampled_fps: Sequence[float],
        config: Any,
        device: torch.device | str | None = None,
        *,
        resized: bool = False,
    ) -> VideoPixelInputs:
        """Decoded videos (uint8 [T_i, H_i, W_i, 3] each; from `frame_resizer` when resized=True) sampled at
        `sampled_fps[i]` frames per second -> the vision tower's inputs, computed on `device`."""

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def vision_tower(self) -> nn.Module:
        """The vision encoder including its merger (what `encode_video` runs)."""

    @property
    @abc.abstractmethod
    def embed_tokens(self) -> nn.Embedding:
        """Input token embedding, weight [V, H]."""

    @property
    @abc.abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The decoder blocks, in order (sequence-parallel code runs them one by one)."""

    @property
    @abc.abstractmethod
    def final_norm(self) -> nn.Module:
        """Norm applied after the last decoder block."""

    @property
    @abc.abstractmethod
    def lm_head_weight(self) -> torch.Tensor:
        """Output projection [V, H] (logits = hidden @ W.T); may share storage with `embed_tokens`."""

    @property
    @abc.abstractmethod
    def video_token_id(self) -> int:
        """Token id of the video placeholder that `build_inputs` replaces with video embeddings."""

    @property
    @abc.abstractmethod
    def merge_size(self) -> int:
        """Spatial merge of the vision tower: a video of grid (t, h, w) gives t*h*w // merge**2 embeddings."""

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def hidden_size(self) -> int:
        return self.embed_tokens.weight.shape[1]

    def num_video_tokens(self, grid_thw: Sequence[int] | torch.Tensor) -> int:
        """Number of embeddings (= video-pad tokens) for one video of patch grid (t, h, w)."""
        return num_video_tokens(grid_thw, self.merge_size)

    # ---- the three stages ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_video(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        """Run the vision tower + merger.

        pixel_values_videos: [sum_i t_i*h_i*w_i, C*tp*p*p] patches of all videos, concatenated.
        video_grid_thw: [N, 3] int64 patch grid per video.
        Returns N tensors [t_i*h_i*w_i // merge**2, H] in the model dtype.
        """

    @abc.abstractmethod
    def build_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        video_embeds: Sequence[torch.Tensor],
        video_grid_thw: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
    ) -> MultimodalInputs:
        """Build decoder inputs.

        input_ids: [B, L] int64 with n_i video-pad tokens per video; videos are consumed in row order.
        attention_mask: [B, L] (None = no padding).
        video_embeds: one [n_i, H] tensor per video (from `encode_video` or the embedding cache).
        video_grid_thw: [N, 3] int64; second_per_grid_ts: [N] seconds per temporal patch (None = 1.0 each).
        """

    @abc.abstractmethod
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values=None,
    ) -> torch.Tensor:
        """Decoder from embeddings: inputs_embeds [B, L, H], position_ids [3, B, L] -> hidden [B, L, H].

        `past_key_values` (from `new_kv_cache`) is extended in place when given; then attention_mask covers
        the cached tokens too ([B, past + L]).
        """

    def logits(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values=None,
    ) -> torch.Tensor:
        """`forward` followed by the LM head: [B, L, V] in the model dtype."""
        hidden = self.forward(inputs_embeds, position_ids, attention_mask, past_key_values)
        return nn.functional.linear(hidden, self.lm_head_weight)

    @abc.abstractmethod
    def new_kv_cache(self):
        """An empty KV cache for incremental decoding with `forward(..., past_key_values=cache)`."""

    @staticmethod
    def decode_position_ids(
        attention_mask: torch.Tensor, rope_deltas: torch.Tensor, num_new: int
    ) -> torch.Tensor:
        """Positions [3, B, num_new] of the last `num_new` tokens of a row whose full mask is `attention_mask`.

        attention_mask: [B, past + num_new], including the new tokens; rope_deltas: [B, 1] from
        `build_inputs`. A text token after the prompt sits at (count of real tokens before it) + delta on all
        three axes, whatever the padding side.
        """
        pos = attention_mask.long().cumsum(-1) - 1
        pos = pos[:, -num_new:] + rope_deltas.to(pos.device)
        return pos.unsqueeze(0).expand(3, -1, -1)

    # ---- vision tower state ----------------------------------------------------------------------------------
    def set_vision_trainable(self, trainable: bool) -> None:
        """Freeze (default for RL) or unfreeze the vision tower."""
        for p in self.vision_tower.parameters():
            p.requires_grad_(trainable)

    @property
    def vision_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vision_tower.parameters())

    def vision_fingerprint(self) -> str:
        """A stable hex digest of the vision tower's weights (names, dtypes, shapes, bytes), for cache keys.

        Recomputed only when a parameter was replaced or modified in place (tracked via storage pointer and
        autograd version counter), so calling it per batch is cheap.
        """
        tensors = list(self.vision_tower.state_dict(keep_vars=True).items())
        stamp = tuple((name, t.data_ptr(), t._version) for name, t in tensors)
        if self._fingerprint is not None and self._fingerprint[0] == stamp:
            return self._fingerprint[1]
        h = hashlib.sha256(self.family.encode())
        for name, t in tensors:
            t = t.detach()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
        digest = h.hexdigest()[:32]
        self._fingerprint = (stamp, digest)
        return digest
