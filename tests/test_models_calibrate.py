"""The vision projector calibration (a data-dependent init): after it, the model's own vision tokens for the
calibration videos are centred (and whitened, when asked) with the asked mean norm, and nothing but the
projector's last layer changed.

Reference: the tokens are re-encoded from the rewritten folder with a fresh `load_model` and measured with
plain torch math (mean, norms, and an eigendecomposition for the whitening); every other weight is compared
exactly with the folder before.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from videos import write_video

import longrl.models as M
from longrl.errors import ModelError
from longrl.models.calibrate import calibrate_vision_projector
from longrl.models.video_inputs import encode_video_file
from longrl.video import SamplingConfig

FRAMES = 8


def _tokens(folder, videos) -> torch.Tensor:
    loaded = M.load_model(folder)
    sampling = SamplingConfig(num_frames=FRAMES)
    return torch.cat(
        [encode_video_file(loaded.adapter, None, v, sampling, loaded.video_config).embeds for v in videos]
    )


def _weights(folder) -> dict[str, torch.Tensor]:
    return M.load_model(folder).adapter.model.state_dict()


def _videos_and_model_copy(tmp_path):
    """Three short videos, a tiny model folder, and a copy of it for the calibration to rewrite."""
    videos = [write_video(tmp_path / f"v{i}.mp4", num_frames=12 + 4 * i, fps=4) for i in range(3)]
    before_dir = M.tiny(tmp_path / "before")
    folder = tmp_path / "model"
    shutil.copytree(before_dir, folder)
    return videos, before_dir, folder


def test_tokens_centred_with_the_target_norm_and_only_the_projector_changed(tmp_path) -> None:
    videos, before_dir, folder = _videos_and_model_copy(tmp_path)
    before = _tokens(before_dir, videos)
    report = calibrate_vision_projector(folder, videos, num_frames=FRAMES, target_norm=2.0)

    after = _tokens(folder, videos)
    # The mean token is gone (float32 sums of ~100 tokens: 1e-5), the centred norm is the target.
    assert after.mean(0).abs().max() < 1e-5
    assert after.norm(dim=-1).mean() == pytest.approx(2.0, rel=1e-5)
    # An affine change of the last layer: the new tokens are the old ones centred and scaled.
    scale = 2.0 / (before - before.mean(0)).norm(dim=-1).mean()
    torch.testing.assert_close(after, (before - before.mean(0)) * scale, rtol=1e-4, atol=1e-5)
    assert report.videos == 3 and report.tokens == before.shape[0]
    assert report.norm_after == pytest.approx(2.0, rel=1e-5)
    assert report.mean_cosine_before > report.mean_cosine_after

    old, new = _weights(before_dir), _weights(folder)
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"model.visual.merger.mlp.2.weight", "model.visual.merger.mlp.2.bias"}


def test_whitening_evens_out_the_principal_directions(tmp_path) -> None:
    videos, before_dir, folder = _videos_and_model_copy(tmp_path)
    before = _tokens(before_dir, videos).double()
    report = calibrate_vision_projector(folder, videos, num_frames=FRAMES, target_norm=2.0, whiten=0.01)

    # Reference, written out here: ZCA with the eigenvalue floor 0.01 * mean eigenvalue, then scaled.
    centred = before - before.mean(0)
    lam, vecs = torch.linalg.eigh(centred.T @ centred / centred.shape[0])
    lam = lam.clamp_min(0)
    white = centred @ vecs @ torch.diag((lam + 0.01 * lam.mean()).rsqrt()) @ vecs.T
    expected = white * 2.0 / white.norm(dim=-1).mean()
    after = _tokens(folder, videos).double()
    torch.testing.assert_close(after, expected, rtol=1e-3, atol=1e-4)
    assert after.norm(dim=-1).mean() == pytest.approx(2.0, rel=1e-4)

    # The strongest direction held most of the variance; after whitening, far less.
    def top_share(x):
        eig = torch.linalg.eigvalsh((x - x.mean(0)).T @ (x - x.mean(0)))
        return float(eig[-1] / eig.sum())

    assert report.whiten == 0.01
    assert report.top_share_before == pytest.approx(top_share(before), rel=1e-3)
    assert report.top_share_after == pytest.approx(top_share(after), rel=1e-2)
    assert report.top_share_after < report.top_share_before / 2


def test_mistakes_are_model_errors(tmp_path) -> None:
    folder = M.tiny(tmp_path / "model")
    with pytest.raises(ModelError, match="at least one video"):
        calibrate_vision_projector(folder, [], num_frames=FRAMES)
    with pytest.raises(ModelError, match="target_norm must be positive"):
        calibrate_vision_projector(folder, [tmp_path / "x.mp4"], num_frames=FRAMES, target_norm=0.0)
    for floor in (0.0, float("inf"), float("nan")):
        with pytest.raises(ModelError, match="whiten"):
            calibrate_vision_projector(folder, [tmp_path / "x.mp4"], num_frames=FRAMES, whiten=floor)
