"""A data-dependent init of a random model's vision projector: centre and scale the tokens it emits.

A randomly initialised vision tower maps every frame to nearly the same direction: on the synthetic videos
the tiny model's merged tokens have a mean pairwise cosine of about 0.7, so what tells one object, colour or
region from another is a small part of each token, and the language model is slow to learn to attend by it.
`calibrate_vision_projector` encodes some videos, subtracts the mean token in the projector's last bias and
scales that layer so the centred tokens have a given mean norm (the spirit of LSUV init: fit the init's
statistics to real inputs, learn nothing). `longrl demo` runs it on its SFT videos before CoT-SFT.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from longrl.errors import ModelError


@dataclass(frozen=True)
class CalibrationReport:
    """What the calibration measured on its videos, before and after (norms: mean L2 norm of a token)."""

    videos: int
    tokens: int
    mean_cosine_before: float
    mean_cosine_after: float
    norm_before: float
    norm_after: float


def _mean_cosine(tokens: torch.Tensor, limit: int = 4096) -> float:
    """Mean cosine similarity over the distinct pairs of (at most `limit`, evenly spaced) tokens [N, H]."""
    if tokens.shape[0] > limit:
        tokens = tokens[torch.linspace(0, tokens.shape[0] - 1, limit).long()]
    n = tokens.shape[0]
    if n < 2:
        return 1.0
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    return float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def _projector_output_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The last Linear of a Qwen2-VL / Qwen2.5-VL patch merger (the layer whose output the LM reads)."""
    merger = getattr(getattr(getattr(model, "model", None), "visual", None), "merger", None)
    mlp = getattr(merger, "mlp", None)
    last = mlp[-1] if isinstance(mlp, torch.nn.Sequential) else None
    if not isinstance(last, torch.nn.Linear) or last.bias is None:
        raise ModelError(
            f"{type(model).__name__} has no Qwen-VL patch merger with a biased output Linear to calibrate"
        )
    return last


@torch.no_grad()
def calibrate_vision_projector(
    folder: str | os.PathLike,
    videos: Sequence[str | os.PathLike],
    *,
    num_frames: int,
    target_norm: float = 1.0,
) -> CalibrationReport:
    """Rewrite the weights in `folder`: the vision tokens of `videos` become centred, mean norm `target_norm`.

    The mean token m and the mean norm s of (token - m) are measured over every token of every video
    (`num_frames` sampled per video); then the projector's output layer (W, b) becomes
    (W, b - m) * target / s.
    The model is loaded and saved in float32 (what the random tiny model is), and the folder is rewritten in
    place: build in a temporary folder and rename it, as `longrl demo` does, when a kill must not leave it
    half-written. Raises ModelError for a model without a Qwen-VL patch merger, no video or a bad target;
    VideoError for an unreadable video.
    """
    from longrl.models import load_model
    from longrl.models.video_inputs import encode_video_file
    from longrl.video import SamplingConfig

    if not videos:
        raise ModelError("calibrate_vision_projector needs at least one video")
    if not target_norm > 0:  # also refuses NaN
        raise ModelError(f"target_norm must be positive, got {target_norm}")
    loaded = load_model(folder)
    model = loaded.adapter.model
    layer = _projector_output_layer(model)
    sampling = SamplingConfig(num_frames=num_frames)

    before = torch.cat(
        [
            encode_video_file(loaded.adapter, None, v, sampling, loaded.video_config).embeds.float()
            for v in videos
        ]
    )
    mean = before.mean(0)
    spread = float((before - mean).norm(dim=-1).mean())
    if spread == 0.0:
        raise ModelError("calibrate_vision_projector: every vision token is identical; nothing to scale")
    scale = target_norm / spread
    layer.bias.sub_(mean.to(layer.bias.dtype)).mul_(scale)
    layer.weight.mul_(scale)
    after = (before - mean) * scale  # the layer is affine: exactly what it now emits for these videos
    model.save_pretrained(Path(folder))
    return CalibrationReport(
        videos=len(videos),
        tokens=int(before.shape[0]),
        mean_cosine_before=_mean_cosine(before),
        mean_cosine_after=_mean_cosine(after),
        norm_before=float(before.norm(dim=-1).mean()),
        norm_after=float(after.norm(dim=-1).mean()),
    )
