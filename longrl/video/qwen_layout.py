"""Qwen2-VL / Qwen2.5-VL video preprocessing: resize, rescale + normalize, patchify. Pure torch, any device.

Reproduces transformers' `Qwen2VLVideoProcessor` (which needs torchvision, absent here) step by step:

1. smart_resize: both sides a multiple of factor = patch_size * merge_size (28), area within [min_pixels,
   max_pixels], aspect ratio kept as well as possible. With a total budget `total_pixels` (HF's
   `cap_pixels_per_frame=True` with total_pixels = int(max_video_tokens * 28 * 28 * 0.9), as in qwen-vl-utils)
   the per-frame cap becomes max(min(max_pixels, total_pixels * temporal_patch_size // num_frames),
   int(min_pixels * 1.05)).
2. Resize: bicubic, antialias, align_corners=False, exactly as torchvision's `resize` does it for uint8
   tensors: nothing when the size is unchanged; on CPU torch's native uint8 kernel; on other devices float32
   interpolation, clamp to [0, 255], round, back to uint8. (The two paths differ by a few levels on the same
   input, as in HF: CPU and GPU preprocessing are each equal to HF's on that device, not to each other.)
3. Rescale 1/255 and normalize fused the way HF fuses them: x.float() - mean * 255, then / (std * 255), with
   mean and std as float32 tensors, so the float32 output matches bit for bit.
4. Patchify: pad the frame count to a multiple of temporal_patch_size by repeating the last frame, then lay
   out [grid_t * grid_h * grid_w, C * temporal_patch_size * patch_size * patch_size]: rows in order (t, block
   row, block col, row in merge window, col in merge window) - merge-window-major, so the 2x2 patches merged
   into one token are adjacent rows - and within a row the values in order (channel, frame in temporal patch,
   y, x).

Memory: steps 2-4 run a chunk of frames at a time (per frame, per temporal patch: bit-identical to one piece)
into one preallocated output, and `FrameResizer` lets the decoder resize frames as they arrive, so a long
video is never held whole at full resolution or as floats before resizing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longrl.errors import ConfigError, ModelError, VideoError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class QwenVideoConfig:
    """Preprocessing parameters; defaults are transformers' Qwen2VLVideoProcessor defaults.

    min_pixels / max_pixels: area bounds per frame after resizing (HF `size.shortest_edge` /
    `size.longest_edge`). total_pixels: optional budget across all frames of a video (None: no total cap, HF's
    current default). image_mean / image_std: per-channel, for pixels in [0, 1]; read them from the model with
    `from_pretrained`.
    """

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int | None = None
    image_mean: tuple[float, ...] = field(default=OPENAI_CLIP_MEAN)
    image_std: tuple[float, ...] = field(default=OPENAI_CLIP_STD)
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        """Pixel budgets come from flags and model folders: one ConfigError naming the bad one."""
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"video {name} must be >= 1, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"video min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels}); "
                "lower min_pixels or raise max_pixels"
            )
        if self.total_pixels is not None and self.total_pixels < 1:
            raise ConfigError(f"video total_pixels must be >= 1, got {self.total_pixels}")

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this (28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **overrides) -> QwenVideoConfig:
        """Read a model folder's video preprocessing settings; `overrides` win. Defaults when none are found.

        Looks where transformers 5 looks, in its order (see `read_processor_settings`): the "video_processor"
        entry of processor_config.json, then video_preprocessor_config.json, then preprocessor_config.json
        (the image processor's, which Qwen2.5-VL checkpoints ship). Raises ModelError for unreadable JSON.
        """
        settings = read_processor_settings(model_dir, "video_processor")
        return cls.from_dict(settings or {}, **overrides)

    @classmethod
    def from_dict(cls, config: dict, **overrides) -> QwenVideoConfig:
        """Build from a preprocessor-config dict (unknown keys ignored); `overrides` win.

        Understands both spellings of the pixel bounds (see `pixel_bounds`).
        """
        values: dict = {}
        for key in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor"):
            if config.get(key) is not None:
                values[key] = config[key]
        min_pixels, max_pixels = pixel_bounds(config)
        if min_pixels is not None:
            values["min_pixels"] = min_pixels
        if max_pixels is not None:
            values["max_pixels"] = max_pixels
        for key in ("image_mean", "image_std"):
            if config.get(key) is not None:
                values[key] = tuple(float(v) for v in config[key])
        values.update(overrides)
        return cls(**values)


# Where transformers 5 finds one part of a processor in a model folder, in its order of priority: the part's
# entry in the nested processor_config.json (how transformers 5 saves processors) comes first, then these
# files. A video processor falls back to the image processor's file, as Qwen2.5-VL checkpoints need.
PROCESSOR_FILE = "processor_config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
_PART_FILES = {
    "video_processor": (VIDEO_PROCESSOR_FILE, IMAGE_PROCESSOR_FILE),
    "image_processor": (IMAGE_PROCESSOR_FILE,),
}


def read_processor_settings(model_dir: str | os.PathLike, part: str = "video_processor") -> dict | None:
    """The settings dict of one processor `part` ("video_processor" | "image_processor") of a model folder,
    found where transformers 5 looks for it (see `_PART_FILES`); None when the folder has none.

    Raises ModelError for a file that is not a JSON object.
    """
    if part not in _PART_FILES:
        raise ValueError(f"part must be one of {sorted(_PART_FILES)}, got {part!r}")
    folder = Path(model_dir)
    nested = folder / PROCESSOR_FILE
    if nested.is_file():
        settings = read_json_object(nested).get(part)
        if isinstance(settings, dict):
            return settings
    for name in _PART_FILES[part]:
        if (folder / name).is_file():
            return read_json_object(folder / name)
    return None


def pixel_bounds(config: dict) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) of a Qwen2-VL image/video processor settings dict; None where it sets none.

    Both spellings: `size: {shortest_edge, longest_edge}` and the older `min_pixels` / `max_pixels` keys,
    which win over `size` (as in transformers' processors).
    """
    size = config.get("size") or {}
    lo, hi = config.get("min_pixels"), config.get("max_pixels")
    lo = size.get("shortest_edge") if lo is None else lo
    hi = size.get("longest_edge") if hi is None else hi
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


def read_json_object(path: str | os.PathLike) -> dict:
    """Parse a JSON file holding one object; ModelError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON file ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class QwenVideoInputs:
    """The model inputs for a batch of videos, in HF's names and layout.

    pixel_values_videos: float32 [sum_i t_i * h_i * w_i, C * temporal_patch_size * patch_size**2] (1176 for
    RGB). video_grid_thw: int64 [n_videos, 3], (grid_t, grid_h, grid_w) per video, in patches.
    second_per_grid_ts: float32 [n_videos], seconds covered by one temporal patch (temporal_patch_size / fps).
    """

    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: torch.Tensor


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 128 * 28 * 28,
    max_pixels: int = 768 * 28 * 28,
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with area in [min_pixels, max_pixels], aspect kept.

    Sides are first rounded to the nearest multiple (Python's round: ties to even). If the area is too large,
    both sides are scaled by 1/beta with beta = sqrt(h * w / max_pixels) and floored to a multiple (at least
    `factor`); if too small, scaled by beta = sqrt(min_pixels / (h * w)) and ceiled. Raises VideoError for an
    aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise VideoError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VideoError(
            f"frame aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT_RATIO} "
            f"({width}x{height}); Qwen2.5-VL cannot take it"
        )
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


def frame_pixel_cap(num_frames: int, config: QwenVideoConfig) -> int:
    """The per-frame max_pixels for a video of `num_frames` sampled frames (applies `config.total_pixels`)."""
    if config.total_pixels is None:
        return config.max_pixels
    share = config.total_pixels * config.temporal_patch_size // num_frames
    return max(min(config.max_pixels, share), int(config.min_pixels * 1.05))


def target_size(num_frames: int, height: int, width: int, config: QwenVideoConfig) -> tuple[int, int]:
    """Resized (height, width) of every frame of a `num_frames`-frame video of height x width."""
    return smart_resize(
        height,
        width,
        config.factor,
        min_pixels=config.min_pixels,
        max_pixels=frame_pixel_cap(num_frames, config),
    )


def resize_frames(
    frames: torch.Tensor, height: int, width: int, native_uint8: bool | None = None
) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 frames [T, C, H, W] -> uint8 [T, C, height, width], as torchvision
    does.

    Same size: returned as is. native_uint8=None (torchvision's choice): torch's uint8 kernel on CPU,
    elsewhere float32 interpolation, clamp, round, uint8. True/False force one path (False on CPU reproduces
    the GPU path).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 frames [T, C, H, W], got {frames.dtype} {tuple(frames.shape)}")
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    if native_uint8 is None:
        native_uint8 = frames.device.type == "cpu"
    if native_uint8:
        return F.interpolate(
            frames, size=[height, width], mode="bicubic", align_corners=False, antialias=True
        )
    out = F.interpolate(
        frames.float(), size=[height, width], mode="bicubic", align_corners=False, antialias=True
    )
    return out.clamp_(0, 255).round_().to(torch.uint8)


def normalize_frames(
    frames: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    rescale_factor: float = 1 / 255,
) -> torch.Tensor:
    """Rescale and normalize frames [..., C, H, W] (uint8 or float) -> float32 ((x * rescale) - mean) / std.

    Computed as HF computes it, (x - mean / rescale) / (std / rescale) in float32, so results match bit for
    bit.
    """
    scale = 1.0 / rescale_factor
    mean_t = torch.tensor(mean, dtype=torch.float32, device=frames.device) * scale
    std_t = torch.tensor(std, dtype=torch.float32, device=frames.device) * scale
    if mean_t.numel() != frames.shape[-3] or std_t.numel() != frames.shape[-3]:
        raise ValueError(
            f"mean/std have {mean_t.numel()}/{std_t.numel()} values for {frames.shape[-3]} channels"
        )
    return (frames.to(torch.float32) - mean_t[:, None, None]) / std_t[:, None, None]


def patchify(
    frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut frames [T, C, H, W] into Qwen's flat patch layout -> ([grid_t*grid_h*grid_w, C*tp*p*p], (t, h, w)).

    H and W must be multiples of patch_size * merge_size. T is padded to a multiple of temporal_patch_size by
    repeating the last frame. Row order (t, block row, block col, row in merge window, col in merge window);
    value order within a row (channel, frame, y, x). See the module docstring.
    """
    num_frames, channels, height, width = frames.shape
    side = patch_size * merge_size
    if height % side or width % side:
        raise ValueError(f"frame size {height}x{width} is not a multiple of {side}")
    pad = -num_frames % temporal_patch_size
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    grid_t = (num_frames + pad) // temporal_patch_size
    blocks_h, blocks_w = height // side, width // side
    # Split every axis into (coarse, fine) pieces, then order the pieces the way the vision tower reads them.
    split = frames.reshape(
        grid_t,
        temporal_patch_size,
        channels,
        blocks_h,
        merge_size,
        patch_size,
        blocks_w,
        merge_size,
        patch_size,
    )
    #            t  block_h  block_w  merge_h  merge_w  chan  frame  y  x
    ordered = split.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    grid = (grid_t, blocks_h * merge_size, blocks_w * merge_size)
    rows = grid[0] * grid[1] * grid[2]
    return ordered.reshape(rows, channels * temporal_patch_size * patch_size * patch_size), grid


def _as_tchw(frames: torch.Tensor | np.ndarray, device: torch.device | str | None) -> torch.Tensor:
    """uint8 frames [T, H, W, C] (numpy or torch) -> contiguous uint8 tensor [T, C, H, W] on `device`."""
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    _check_frames(video)
    if video.shape[-1] == 1:
        video = video.expand(-1, -1, -1, 3)
    video = video.permute(0, 3, 1, 2).contiguous()
    return video if device is None else video.to(device)


def _check_frames(frames: torch.Tensor | np.ndarray) -> None:
    uint8 = frames.dtype == (np.uint8 if isinstance(frames, np.ndarray) else torch.uint8)
    if not uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3) or frames.shape[0] < 1:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")


# Work memory of one preprocessing step: frames are resized, normalized and patchified this many bytes' worth
# at a time (a chunk of frames at full resolution, its float copies at the resized size), so the float copies
# of a long video are never made whole. Every step is per frame (per temporal patch for patchify), so the
# result is bit-identical to processing the video in one piece.
CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class FrameResizer:
    """The resize step of `preprocess_video`, to run on chunks of frames while they are decoded (a
    `longrl.video.decode.FrameTransform`), so a long video is never held at full resolution.

    `resizer(frames, num_frames)`: frames uint8 [k, H, W, 3] (numpy or torch) of a video of `num_frames`
    frames -> uint8 tensor [k, h, w, 3] on `device`, (h, w) = target_size(num_frames, H, W, config). The same
    code on the same device as inside preprocess_video, so bit-identical; then call
    preprocess_video(..., resized=True).
    """

    config: QwenVideoConfig
    device: torch.device | str | None = None

    def __call__(self, frames: torch.Tensor | np.ndarray, num_frames: int) -> torch.Tensor:
        video = _as_tchw(frames, self.device)
        height, width = target_size(num_frames, video.shape[2], video.shape[3], self.config)
        return resize_frames(video, height, width).permute(0, 2, 3, 1)


def _layout(
    frames: torch.Tensor | np.ndarray, config: QwenVideoConfig, resized: bool
) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """((height, width) after resizing, (grid_t, grid_h, grid_w)) of one video's frames [T, H, W, C]."""
    _check_frames(frames)
    num_frames, height, width = (int(x) for x in frames.shape[:3])
    if resized:
        if height % config.factor or width % config.factor:
            raise ValueError(
                f"resized frames must have sides that are multiples of {config.factor}, got {height}x{width}"
            )
        size = (height, width)
    else:
        size = target_size(num_frames, height, width, config)
    grid_t = -(-num_frames // config.temporal_patch_size)
    return size, (grid_t, size[0] // config.patch_size, size[1] // config.patch_size)


def _chunk_frames(frames_shape: Sequence[int], size: tuple[int, int], config: QwenVideoConfig) -> int:
    """Frames per step: about CHUNK_BYTES of work memory, a multiple of the temporal patch size."""
    height, width = frames_shape[1:3]
    # uint8 input + its float32 copy (GPU resize), then uint8 resized + normalized + patchified float32.
    per_frame = 3 * (5 * height * width + 9 * size[0] * size[1])
    tp = config.temporal_patch_size
    return max(tp, CHUNK_BYTES // per_frame // tp * tp)


def _write_rows(
    out: torch.Tensor,
    frames: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    config: QwenVideoConfig,
    device: torch.device | str | None,
    chunk_frames: int,
) -> None:
    """Resize, normalize and patchify `frames` chunk by chunk into the rows `out` [t*h*w, C*tp*p*p]."""
    row = 0
    for start in range(0, frames.shape[0], chunk_frames):
        video = _as_tchw(frames[start : start + chunk_frames], device)
        video = resize_frames(video, *size)
        video = normalize_frames(video, config.image_mean, config.image_std, config.rescale_factor)
        # Chunks hold whole temporal patches (chunk_frames is a multiple of tp), so only the last one pads.
        rows, _ = patchify(video, config.patch_size, config.temporal_patch_size, config.merge_size)
        out[row : row + rows.shape[0]] = rows
        row += rows.shape[0]


def _checked_chunk(
    chunk_frames: int | None,
    frames: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    config: QwenVideoConfig,
) -> int:
    if chunk_frames is None:
        return _chunk_frames(frames.shape, size, config)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    tp = config.temporal_patch_size
    return -(-chunk_frames // tp) * tp


def _default_device(frames: torch.Tensor | np.ndarray, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return frames.device if isinstance(frames, torch.Tensor) else torch.device("cpu")


def preprocess_video(
    frames: torch.Tensor | np.ndarray,
    config: QwenVideoConfig = QwenVideoConfig(),
    device: torch.device | str | None = None,
    *,
    resized: bool = False,
    chunk_frames: int | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """One video's uint8 frames [T, H, W, 3] -> (pixel rows float32 [t*h*w, 1176], (grid_t, grid_h, grid_w)).

    Runs on `device` (default: where `frames` are; numpy frames go to CPU): resize, normalize, patchify, a
    chunk of `chunk_frames` frames at a time (default: about CHUNK_BYTES of work memory; rounded up to a
    multiple of temporal_patch_size), written into one preallocated output, so no full-resolution or float
    copy of the whole video is ever made. resized=True: the frames are already at their target size (from
    `FrameResizer` with the same config and frame count); they are not resized again.
    """
    size, grid = _layout(frames, config, resized)
    chunk = _checked_chunk(chunk_frames, frames, size, config)
    out = torch.empty(
        (grid[0] * grid[1] * grid[2], 3 * config.temporal_patch_size * config.patch_size**2),
        dtype=torch.float32,
        device=_default_device(frames, device),
    )
    _write_rows(out, frames, size, config, device, chunk)
    return out, grid


def preprocess_videos(
    videos: Sequence[torch.Tensor | np.ndarray],
    sampled_fps: Sequence[float],
    config: QwenVideoConfig = QwenVideoConfig(),
    device: torch.device | str | None = None,
    *,
    resized: bool = False,
    chunk_frames: int | None = None,
) -> QwenVideoInputs:
    """A batch of videos (each uint8 [T_i, H_i, W_i, 3]) -> QwenVideoInputs, as HF's processor returns them.

    sampled_fps[i] is the rate of the frames sampled from video i (`FramePlan.sampled_fps`); it gives
    second_per_grid_ts[i] = temporal_patch_size / sampled_fps[i]. Rows of all videos are written in order into
    one output on `device` (default: where the first video is). `resized` and `chunk_frames`: as in
    `preprocess_video`.
    """
    if len(videos) != len(sampled_fps):
        raise ValueError(f"{len(videos)} videos but {len(sampled_fps)} sampled_fps values")
    if not videos:
        raise ValueError("no videos")
    layouts = [_layout(frames, config, resized) for frames in videos]
    grids = [grid for _, grid in layouts]
    out_device = _default_device(videos[0], device)
    out = torch.empty(
        (sum(t * h * w for t, h, w in grids), 3 * config.temporal_patch_size * config.patch_size**2),
        dtype=torch.float32,
        device=out_device,
    )
    row = 0
    for frames, (size, (t, h, w)) in zip(videos, layouts, strict=True):
        chunk = _checked_chunk(chunk_frames, frames, size, config)
        _write_rows(out[row : row + t * h * w], frames, size, config, device, chunk)
        row += t * h * w
    return QwenVideoInputs(
        pixel_values_videos=out,
        video_grid_thw=torch.tensor(grids, dtype=torch.int64, device=out_device),
        second_per_grid_ts=torch.tensor(
            [config.temporal_patch_size / fps for fps in sampled_fps], dtype=torch.float32, device=out_device
        ),
    )
