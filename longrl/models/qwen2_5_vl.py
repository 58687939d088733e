"""ModelAdapter for Qwen2.5-VL (transformers >= 5.17: `model.model.visual`, `.language_model`, `lm_head`).

The trap this file exists to avoid: Qwen2.5-VL's forward builds 3-D mrope positions only when it is given
`mm_token_type_ids`; without them it silently uses 1-D positions, and a model trained one way and rolled
out the other sees different positions for every video token. `build_inputs` always builds the 3-D positions
itself (`mrope_positions`) and `forward` feeds them to the decoder explicitly.

The second trap: transformers 5.17's `get_rope_index` resumes the text after a video at the video's start
+ max(h, w) / merge, while Qwen2.5-VL was trained (and vLLM and transformers 4.x run it) with the text
resuming at the video's largest position + 1. The two agree only while a video's temporal extent is short;
on long videos they differ, and worse, transformers' own rope_deltas (max + 1 - length) then put decoded
tokens at other positions than the full forward does. `mrope_positions` implements the original rule, so
training, the HF engine's incremental decode and vLLM all see the same positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from longrl.models.base import ModelAdapter, MultimodalInputs
from longrl.models.processor_config import ProcessorConfig
from longrl.video.qwen_layout import FrameResizer, QwenVideoConfig, QwenVideoInputs, preprocess_videos

# Values of mm_token_type_ids in transformers' Qwen-VL code.
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2


def mrope_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_types: torch.Tensor,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | None,
    *,
    merge_size: int,
    tokens_per_second: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's 3-D rope positions (the rule the model was trained with) and the decode offsets.

    input_ids / attention_mask / token_types: [B, L] (types: 0 text, 2 video pad; padding has mask 0).
    video_grid_thw: [N, 3] (t, h, w) in patches, videos in row-major order of appearance;
    second_per_grid_ts: [N] seconds per temporal patch (None = 1.0 each).
    Text runs advance by 1 from the current start; a video's tokens get (start + floor(t_index * seconds *
    tokens_per_second), start + h_index, start + w_index) over its merged grid; the text after it resumes at
    the largest position so far + 1. Padding gets position 0.
    Returns position_ids [3, B, L] int64 and rope_deltas [B, 1] = max position + 1 - real length, so the
    k-th generated token (k = 0, 1, ...) sits at real length + k + delta on all three axes.
    """
    b, length = input_ids.shape
    device = input_ids.device
    positions = torch.zeros(3, b, length, dtype=torch.long, device=device)
    deltas = torch.zeros(b, 1, dtype=torch.long, device=device)
    grids = video_grid_thw.tolist() if video_grid_thw is not None else []
    seconds = second_per_grid_ts.tolist() if second_per_grid_ts is not None else [1.0] * len(grids)
    video = 0
    for row in range(b):
        real = attention_mask[row].bool()
        types = token_types[row][real].tolist()
        parts: list[torch.Tensor] = []
        start = 0
        i = 0
        while i < len(types):
            j = i
            while j < len(types) and (types[j] == VIDEO_TYPE) == (types[i] == VIDEO_TYPE):
                j += 1
            if types[i] != VIDEO_TYPE:
                parts.append(torch.arange(start, start + j - i, device=device).expand(3, -1))
                start += j - i
                i = j
                continue
            t, h, w = grids[video]
            h, w = h // merge_size, w // merge_size
            interval = seconds[video] * tokens_per_second
            video += 1
            t_pos = (torch.arange(t, device=device) * interval).long()
            grid_t, grid_h, grid_w = torch.meshgrid(
                t_pos, torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
            )
            part = torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + start
            parts.append(part)
            start = int(part.max()) + 1
            i += t * h * w  # one video's tokens; two videos back to back are two segments
        if parts:
            row_positions = torch.cat(parts, dim=1)
            positions[:, row, real] = row_positions
            deltas[row, 0] = int(row_positions.max()) + 1 - len(types)
    return positions, deltas


class Qwen2_5_VLAdapter(ModelAdapter):
    """Adapter over `transformers.Qwen2_5_VLForConditionalGeneration`."""

    family = "qwen2_5_vl"
    processor_config_class = ProcessorConfig

    @classmethod
    def hf_model_class(cls) -> type[nn.Module]:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    # ---- video preprocessing (longrl.video.qwen_layout: HF's Qwen2-VL video processor, reproduced) -----------
    def frame_resizer(
        self, config: QwenVideoConfig, device: torch.device | str | None = None
    ) -> FrameResizer:
        return FrameResizer(config, device)

    def preprocess_videos(
        self,
        videos: Sequence[torch.Tensor | np.ndarray],
        sampled_fps: Sequence[float],
        config: QwenVideoConfig,
        device: torch.device | str | None = None,
        *,
        resized: bool = False,
    ) -> QwenVideoInputs:
        return preprocess_videos(videos, sampled_fps, config, device, resized=resized)

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.visual

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    @property
    def rotary_emb(self) -> nn.Module:
        """Maps (hidden [B, L, H], position_ids [3, B, L]) -> (cos, sin) [B, L, head_dim] for the layers."""
        return self.language_model.rotary_emb

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.lm_head.weight

    @property
    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def tokens_per_second(self) -> float:
        """Temporal rope positions advance by this many per second of video (x second_per_grid_ts)."""
        return float(self.model.config.vision_config.tokens_per_second)

    # ---- stages ----------------------------------------------------------------------------------------------
    def encode_video(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        grid = video_grid_thw.to(device=self.device, dtype=torch.long)
        if grid.ndim != 2 or grid.shape[1] != 3:
            raise ValueError(f"video_grid_thw must be [N, 3], got {tuple(grid.shape)}")
        n_patches = int(grid.prod(-1).sum())
        if pixel_values_videos.ndim != 2 or pixel_values_videos.shape[0] != n_patches:
            raise ValueError(
                f"pixel_values_videos must be [{n_patches}, C*tp*p*p] for grids {grid.tolist()}, "
                f"got {tuple(pixel_values_videos.shape)}"
            )
        out = self.model.model.get_video_features(pixel_values_videos.to(self.device), grid)
        return list(out.pooler_output)

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] int32: 0 text, 1 image pad, 2 video pad (what HF's processor returns)."""
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == self.image_token_id] = IMAGE_TYPE
        types[input_ids == self.video_token_id] = VIDEO_TYPE
        return types

    def build_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        video_embeds: Sequence[torch.Tensor],
        video_grid_thw: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
    ) -> MultimodalInputs:
        device = self.device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        if (input_ids == self.image_token_id).any():
            raise ValueError("image inputs are not supported: input_ids contain image-pad tokens")

        embeds = self.embed_tokens(input_ids)
        video_mask = input_ids == self.video_token_id
        n_pad = int(video_mask.sum())
        grid = None
        if video_grid_thw is not None and len(video_grid_thw):
            grid = torch.as_tensor(video_grid_thw, dtype=torch.long, device=device).reshape(-1, 3)
        self._check_videos(n_pad, video_embeds, grid)
        if n_pad:
            flat = torch.cat(list(video_embeds), dim=0).to(device=device, dtype=embeds.dtype)
            # masked_scatter, as the HF forward does: the i-th pad (row-major) gets the i-th embedding row.
            embeds = embeds.masked_scatter(video_mask.unsqueeze(-1), flat)

        if second_per_grid_ts is not None:
            second_per_grid_ts = torch.as_tensor(second_per_grid_ts, dtype=torch.float32, device=device)
        position_ids, rope_deltas = mrope_positions(
            input_ids,
            attention_mask,
            self.mm_token_type_ids(input_ids),
            grid,
            second_per_grid_ts,
            merge_size=self.merge_size,
            tokens_per_second=self.tokens_per_second,
        )
        return MultimodalInputs(embeds, position_ids, attention_mask, rope_deltas)

    def _check_videos(
        self, n_pad: int, video_embeds: Sequence[torch.Tensor], grid: torch.Tensor | None
    ) -> None:
        n_videos = 0 if grid is None else grid.shape[0]
        if len(video_embeds) != n_videos:
            raise ValueError(f"got {len(video_embeds)} video embeddings but {n_videos} video grids")
        total = 0
        for i, emb in enumerate(video_embeds):
            want = self.num_video_tokens(grid[i])
            if emb.ndim != 2 or emb.shape != (want, self.hidden_size):
                raise ValueError(
                    f"video {i}: embeddings {tuple(emb.shape)} do not match grid {grid[i].tolist()} "
                    f"(expected [{want}, {self.hidden_size}])"
                )
            total += want
        if total != n_pad:
            raise ValueError(
                f"input_ids hold {n_pad} video-pad tokens but the videos have {total} embeddings"
            )

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values=None,
    ) -> torch.Tensor:
        if position_ids.ndim != 3 or position_ids.shape[0] != 3:
            raise ValueError(
                f"position_ids must be [3, B, L] mrope positions, got {tuple(position_ids.shape)}"
            )
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        return out.last_hidden_state

    def new_kv_cache(self) -> DynamicCache:
        return DynamicCache(config=self.language_model.config)
