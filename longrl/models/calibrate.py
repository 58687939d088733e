"""A data-dependent init of a random model's vision projector: centre, optionally whiten, and scale its tokens.

A randomly initialised vision tower maps every frame to nearly the same direction: on the synthetic videos
the tiny model's merged tokens have a mean pairwise cosine of about 0.7, so what tells one object, colour or
region from another is a small part of each token, and the language model is slow to learn to attend by it.
`calibrate_vision_projector` encodes some videos, subtracts the mean token in the projector's last bias and
scales that layer so the centred tokens have a given mean norm (the spirit of LSUV init: fit the init's
statistics to real inputs, learn nothing). With `whiten`, it also evens out the variance of the tokens'
principal directions (ZCA whitening with a floor on the eigenvalues): on the synthetic videos the first
direction holds 36-49% of the variance (three seeds; mostly the objects' colours), and where an object is takes
a few percent. `longrl demo` runs it on its SFT videos before CoT-SFT.
"""

from __future__ import annotations

import math
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
    # the whitening's eigenvalue floor, as a fraction of the mean eigenvalue (None: not whitened)
    whiten: float | None = None
    # share of the tokens' variance along their first principal direction
    top_share_before: float = 0.0
    top_share_after: float = 0.0


def _mean_cosine(tokens: torch.Tensor, limit: int = 4096) -> float:
    """Mean cosine similarity over the distinct pairs of (at most `limit`, evenly spaced) tokens [N, H]."""
    if tokens.shape[0] > limit:
        tokens = tokens[torch.linspace(0, tokens.shape[0] - 1, limit).long()]
    n = tokens.shape[0]
    if n < 2:
        return 1.0
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    return float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def _top_share(centred: torch.Tensor) -> float:
    """Fraction of the variance of centred tokens [N, H] along their first principal direction."""
    eig = torch.linalg.eigvalsh(centred.T @ centred)
    return float(eig[-1] / eig.sum()) if eig.sum() > 0 else 0.0


def whitening_matrix(centred: torch.Tensor, floor: float) -> torch.Tensor:
    """ZCA whitening [H, H] for centred tokens [N, H]: U diag(1 / sqrt(lambda + floor * mean(lambda))) U^T.

    lambda, U: eigenvalues and eigenvectors of the tokens' covariance. The floor bounds how much a direction
    with almost no variance (noise) is amplified: a direction with variance lambda ends with variance
    lambda / (lambda + floor * mean(lambda)), close to 1 for the directions that carry the content.
    """
    cov = centred.T @ centred / centred.shape[0]
    lam, vecs = torch.linalg.eigh(cov)
    lam = lam.clamp_min(0)
    return vecs @ torch.diag((lam + floor * lam.mean()).rsqrt()) @ vecs.T


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
    whiten: float | None = None,
) -> CalibrationReport:
    """Rewrite the weights in `folder`: the vision tokens of `videos` become centred (and, with `whiten`,
    whitened), mean norm `target_norm`.

    The mean token m is measured over every token of every video (`num_frames` sampled per video). Without
    `whiten`, P is the identity; with it, P = whitening_matrix(tokens - m, whiten) (whiten > 0: the eigenvalue
    floor as a fraction of the mean eigenvalue). With s the mean norm of P (token - m), the projector's
    output layer (W, b) becomes (P W, P (b - m)) * target / s.
    The model is loaded and saved in float32 (what the random tiny model is), and the folder is rewritten in
    place: build in a temporary folder and rename it, as `longrl demo` does, when a kill must not leave it
    half-written. Raises ModelError for a model without a Qwen-VL patch merger, no video, a bad target or
    floor, or videos whose tokens are all identical; VideoError for an unreadable video.
    """
    from longrl.models import load_model
    from longrl.models.video_inputs import encode_video_file
    from longrl.video import SamplingConfig

    if not videos:
        raise ModelError("calibrate_vision_projector needs at least one video")
    if not target_norm > 0:  # also refuses NaN
        raise ModelError(f"target_norm must be positive, got {target_norm}")
    if whiten is not None and not 0 < whiten < math.inf:
        raise ModelError(f"whiten (the eigenvalue floor) must be positive and finite, or None; got {whiten}")
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
    centred = (before - mean).double()
    if float(centred.norm(dim=-1).mean()) == 0.0:
        raise ModelError("calibrate_vision_projector: every vision token is identical; nothing to scale")
    eye = torch.eye(centred.shape[1], dtype=torch.float64)
    transform = eye if whiten is None else whitening_matrix(centred, whiten)
    transform = transform * (target_norm / (centred @ transform.T).norm(dim=-1).mean())
    weight, bias = layer.weight.double(), layer.bias.double()
    layer.weight.copy_((transform @ weight).to(layer.weight.dtype))
    layer.bias.copy_((transform @ (bias - mean.double())).to(layer.bias.dtype))
    after = centred @ transform.T  # the layer is affine: exactly what it now emits for these videos
    model.save_pretrained(Path(folder))
    return CalibrationReport(
        videos=len(videos),
        tokens=int(before.shape[0]),
        mean_cosine_before=_mean_cosine(before),
        mean_cosine_after=_mean_cosine(after.float()),
        norm_before=float(before.norm(dim=-1).mean()),
        norm_after=float(after.norm(dim=-1).mean()),
        whiten=whiten,
        top_share_before=_top_share(centred),
        top_share_after=_top_share(after),
    )
