"""A model folder's preprocessing files: what `load_model` reads and `save_model` writes.

The video settings are the video layer's `QwenVideoConfig` (read with `QwenVideoConfig.from_pretrained`,
the project's one reader of these files). What is model-level lives here: the still-image pixel budgets
(longrl feeds no images, but a saved folder must carry them so transformers' processors and vLLM load it
unchanged) and writing `preprocessor_config.json` (images) + `video_preprocessor_config.json` (videos).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from longrl.video.qwen_layout import (
    IMAGE_PROCESSOR_FILE,
    VIDEO_PROCESSOR_FILE,
    QwenVideoConfig,
    pixel_bounds,
    read_processor_settings,
)

# transformers' Qwen2VLImageProcessor defaults (size.shortest_edge / size.longest_edge).
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280


@dataclass(frozen=True)
class ProcessorConfig:
    """Preprocessing of one model: `video` (per-frame pixel budget, patch sizes, mean/std) and the pixel
    budget of one still image (image_min_pixels / image_max_pixels, H*W after resizing)."""

    video: QwenVideoConfig = field(default_factory=QwenVideoConfig)
    image_min_pixels: int = IMAGE_MIN_PIXELS
    image_max_pixels: int = IMAGE_MAX_PIXELS

    @classmethod
    def from_folder(cls, folder: str | Path) -> ProcessorConfig:
        """`read_processor_config(folder)` (the `ModelAdapter.processor_config_class` interface)."""
        return read_processor_config(folder)

    def write(self, folder: str | Path) -> None:
        """`write_processor_config(folder, self)` (the `ModelAdapter.processor_config_class` interface)."""
        write_processor_config(folder, self)


def read_processor_config(folder: str | Path) -> ProcessorConfig:
    """Read a model folder's preprocessing settings; Qwen2.5-VL defaults for what is absent.

    Videos: `QwenVideoConfig.from_pretrained` (transformers 5's lookup order; without a video file, videos use
    the image file's values, as Qwen2.5-VL repos need). Images: the pixel bounds of the image processor's
    settings. Raises ModelError for unreadable JSON.
    """
    image = read_processor_settings(folder, "image_processor") or {}
    lo, hi = pixel_bounds(image)
    return ProcessorConfig(
        video=QwenVideoConfig.from_pretrained(folder),
        image_min_pixels=IMAGE_MIN_PIXELS if lo is None else lo,
        image_max_pixels=IMAGE_MAX_PIXELS if hi is None else hi,
    )


def _settings(video: QwenVideoConfig, min_pixels: int, max_pixels: int) -> dict:
    # The pixel bounds go in twice (old `min_pixels` keys and the newer `size` dict) so that old and new
    # transformers read the same budgets.
    return {
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": video.rescale_factor,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": list(video.image_mean),
        "image_std": list(video.image_std),
        "patch_size": video.patch_size,
        "temporal_patch_size": video.temporal_patch_size,
        "merge_size": video.merge_size,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "processor_class": "Qwen2_5_VLProcessor",
    }


def write_processor_config(folder: str | Path, cfg: ProcessorConfig) -> None:
    """Write `preprocessor_config.json` and `video_preprocessor_config.json` into `folder`.

    `cfg.video.total_pixels` is a run-time choice (how many frames a run samples) and is not written.
    """
    folder = Path(folder)
    video = cfg.video
    image = _settings(video, cfg.image_min_pixels, cfg.image_max_pixels) | {
        "image_processor_type": "Qwen2VLImageProcessor"
    }
    videos = _settings(video, video.min_pixels, video.max_pixels) | {
        "video_processor_type": "Qwen2VLVideoProcessor"
    }
    (folder / IMAGE_PROCESSOR_FILE).write_text(json.dumps(image, indent=2) + "\n")
    (folder / VIDEO_PROCESSOR_FILE).write_text(json.dumps(videos, indent=2) + "\n")
