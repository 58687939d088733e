"""Qwen2.5-VL preprocessing: smart_resize, pixel caps, resize, normalize, patchify layout, batch outputs.

References:
- smart_resize and the per-frame cap: values computed by hand from the definitions (exact).
- patchify: an independent derivation with explicit loops over grid positions, appending rows in the vision
  tower's reading order (exact, bitwise).
- normalize: float64 ((x / 255) - mean) / std with atol 1e-5, and HF's fused float32 formula in numpy
  (bitwise).
- transformers' Qwen2VLVideoProcessor itself, bitwise: in-process where torchvision is installed, and in a
  child process with a minimal torchvision stand-in (its resize transcribed from torchvision's resize_image)
  where transformers and PIL are installed but torchvision is not. Both skip otherwise.
- CUDA (skips without a GPU): the CUDA pipeline against the CPU one: normalize + patchify bitwise, resize
  within 1 uint8 level of the CPU float path.
- Chunked processing (bounded memory) and resizing while decoding (`FrameResizer`, then resized=True): the
  whole video in one piece (resize, normalize, patchify of all frames at once), bitwise, on both resize paths
  (CPU uint8 kernel and the float path GPUs use) and on CUDA.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import requires_cuda

import longrl.video.qwen_layout as layout_mod
from longrl.errors import ModelError, VideoError
from longrl.video.qwen_layout import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    FrameResizer,
    QwenVideoConfig,
    frame_pixel_cap,
    normalize_frames,
    patchify,
    preprocess_video,
    preprocess_videos,
    resize_frames,
    smart_resize,
    target_size,
)


@pytest.mark.parametrize(
    ("hw", "kwargs", "expected"),
    [
        # Rounded to 56x56 = 3136 < 100352: scale up by sqrt(100352 / 3072) = 5.7155, ceil to 28s: 9.80 -> 10,
        # 13.06 -> 14.
        ((48, 64), {}, (280, 392)),
        # 1092x1932 > 602112: scale by 1/sqrt(2073600 / 602112) = 1/1.8558, floor: 20.78 -> 20, 36.95 -> 36.
        ((1080, 1920), {}, (560, 1008)),
        ((224, 448), {}, (224, 448)),  # already multiples, inside the bounds
        ((42, 70), {"min_pixels": 1}, (56, 56)),  # 1.5 -> 2 and 2.5 -> 2: Python's round, ties to even
        # Too wide for max_pixels=78400: floor(0.71) = 0 is raised to one factor (28); 141 * 28 = 3948. The
        # area (110544) then exceeds max_pixels, as in HF.
        ((28, 5600), {"max_pixels": 28 * 28 * 100}, (28, 3948)),
        ((48, 64), {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16}, (56, 56)),
        ((100, 100), {"factor": 32, "min_pixels": 1, "max_pixels": 10**6}, (96, 96)),  # 3.125 -> 3
    ],
)
def test_smart_resize(hw, kwargs, expected):
    assert smart_resize(*hw, **kwargs) == expected


def test_smart_resize_rejects_extreme_aspect():
    with pytest.raises(VideoError, match="aspect ratio 200.1 exceeds 200"):
        smart_resize(10, 2001)
    assert smart_resize(10, 2000, min_pixels=1)  # exactly 200 is allowed


def test_frame_pixel_cap():
    config = QwenVideoConfig(min_pixels=3136, max_pixels=602112, total_pixels=28 * 28 * 100)
    # Share per frame: 78400 * 2 // 16 = 9800, below max_pixels, above 1.05 * min_pixels = 3292.
    assert frame_pixel_cap(16, config) == 9800
    # 78400 * 2 // 200 = 784 < 3292: floored at int(3136 * 1.05) = 3292.
    assert frame_pixel_cap(200, config) == 3292
    # 78400 * 2 // 1 = 156800 but max_pixels 20000 wins.
    assert frame_pixel_cap(1, QwenVideoConfig(min_pixels=3136, max_pixels=20000, total_pixels=78400)) == 20000
    assert frame_pixel_cap(16, QwenVideoConfig()) == 768 * 28 * 28  # no total budget
    # 480x640 with 9800 px per frame: beta = sqrt(307200 / 9800) = 5.599, floor(3.06) = 3, floor(4.08) = 4.
    assert target_size(16, 480, 640, config) == (84, 112)


def expected_patch_rows(frames: np.ndarray, patch: int, temporal: int, merge: int) -> np.ndarray:
    """Qwen's row layout written out with loops: one row per patch, appended in the tower's reading order."""
    num_frames, channels, height, width = frames.shape
    grid_t = -(-num_frames // temporal)
    rows = []
    for t in range(grid_t):
        for block_y in range(height // (patch * merge)):
            for block_x in range(width // (patch * merge)):
                for in_y in range(merge):
                    for in_x in range(merge):
                        y = (block_y * merge + in_y) * patch
                        x = (block_x * merge + in_x) * patch
                        values = []
                        for c in range(channels):
                            for k in range(temporal):
                                source = min(t * temporal + k, num_frames - 1)  # pad with the last frame
                                values.append(frames[source, c, y : y + patch, x : x + patch].reshape(-1))
                        rows.append(np.concatenate(values))
    return np.stack(rows)


@pytest.mark.parametrize(
    ("shape", "patch", "temporal", "merge"),
    [
        ((4, 3, 56, 84), 14, 2, 2),  # Qwen2.5-VL
        ((5, 3, 56, 28), 14, 2, 2),  # odd frame count: last frame repeated
        ((1, 3, 28, 28), 14, 2, 2),  # a single frame
        ((7, 2, 12, 18), 3, 3, 2),  # other sizes: the layout is general
        ((2, 3, 8, 12), 4, 1, 1),
    ],
)
def test_patchify_layout(shape, patch, temporal, merge):
    gen = torch.Generator().manual_seed(sum(shape))
    frames = torch.randn(shape, generator=gen)
    rows, grid = patchify(frames, patch, temporal, merge)
    expected = expected_patch_rows(frames.numpy(), patch, temporal, merge)
    t, c, h, w = shape
    assert grid == (-(-t // temporal), h // patch, w // patch)
    assert rows.shape == (grid[0] * grid[1] * grid[2], c * temporal * patch * patch)
    np.testing.assert_array_equal(rows.numpy(), expected)


def test_patchify_non_contiguous_input():
    frames = torch.randn(4, 56, 56, 3).permute(0, 3, 1, 2)  # channels-last memory
    rows, _ = patchify(frames)
    np.testing.assert_array_equal(rows.numpy(), expected_patch_rows(frames.contiguous().numpy(), 14, 2, 2))


def test_patchify_rejects_bad_size():
    with pytest.raises(ValueError, match="not a multiple of 28"):
        patchify(torch.zeros(2, 3, 56, 42))


def test_normalize():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 3, 5, 7), generator=gen, dtype=torch.uint8)
    out = normalize_frames(frames)
    assert out.dtype == torch.float32
    mean = np.array(OPENAI_CLIP_MEAN)[:, None, None]
    std = np.array(OPENAI_CLIP_STD)[:, None, None]
    reference = (frames.numpy().astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(out.numpy(), reference, rtol=0, atol=1e-5)
    # HF's fused float32 computation, redone in numpy: (x - mean * 255) / (std * 255).
    fused_mean = np.array(OPENAI_CLIP_MEAN, dtype=np.float32)[:, None, None] * np.float32(255)
    fused_std = np.array(OPENAI_CLIP_STD, dtype=np.float32)[:, None, None] * np.float32(255)
    np.testing.assert_array_equal(out.numpy(), (frames.numpy().astype(np.float32) - fused_mean) / fused_std)


def test_resize_frames():
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (2, 3, 48, 64), generator=gen, dtype=torch.uint8)
    assert resize_frames(frames, 48, 64) is frames  # same size: untouched, as torchvision
    out = resize_frames(frames, 56, 84)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 56, 84)
    flat = torch.full((1, 3, 48, 64), 77, dtype=torch.uint8)
    for native in (True, False):
        assert torch.equal(resize_frames(flat, 28, 56, native_uint8=native), torch.full((1, 3, 28, 56), 77))
    # Halving a smooth ramp: both paths give the 2x2 averages within 1 level (antialiased bicubic).
    ramp = (torch.arange(64).repeat(48, 1) * 3).to(torch.uint8).expand(1, 3, 48, 64).contiguous()
    box = ramp.float().reshape(1, 3, 24, 2, 32, 2).mean((3, 5))
    for native in (True, False):
        half = resize_frames(ramp, 24, 32, native_uint8=native).float()
        assert (half - box)[..., 2:-2].abs().max() <= 1  # away from the borders
    with pytest.raises(ValueError):
        resize_frames(frames.float(), 28, 28)


def test_preprocess_videos_batch():
    gen = np.random.default_rng(0)
    a = gen.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    b = gen.integers(0, 256, (4, 90, 40, 3), dtype=np.uint8)
    config = QwenVideoConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 12)
    out = preprocess_videos([a, torch.from_numpy(b)], [2.0, 0.5], config)
    # a: 48x64 -> 56x56, 5 frames -> 3 temporal patches; b: 90x40 -> 84x28 is below min_pixels, scaled by
    # beta = sqrt(3136 / 3600) = 14/15: ceil(90 * 14/15 / 28) = ceil(3.0) = 3 -> 84, ceil(1.33) = 2 -> 56.
    assert out.video_grid_thw.dtype == torch.int64
    assert out.video_grid_thw.tolist() == [[3, 4, 4], [2, 6, 4]]
    assert out.pixel_values_videos.shape == (3 * 16 + 2 * 24, 1176)
    assert out.pixel_values_videos.dtype == torch.float32
    assert out.second_per_grid_ts.tolist() == [1.0, 4.0]  # temporal patch 2 / fps
    # Rows of video b follow those of video a, each equal to the video processed alone.
    alone_a, _ = preprocess_video(a, config)
    alone_b, _ = preprocess_video(b, config)
    assert torch.equal(out.pixel_values_videos, torch.cat([alone_a, alone_b]))
    # preprocess_video = resize, normalize, patchify.
    video = torch.from_numpy(a).permute(0, 3, 1, 2)
    manual, _ = patchify(normalize_frames(resize_frames(video.contiguous(), 56, 56)))
    assert torch.equal(alone_a, manual)


def _one_piece(frames: np.ndarray, config: QwenVideoConfig, device="cpu", native=None):
    """The unchunked pipeline: all frames resized, normalized and patchified at once."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous().to(device)
    h, w = target_size(video.shape[0], video.shape[2], video.shape[3], config)
    resized = resize_frames(video, h, w, native_uint8=native)
    normalized = normalize_frames(resized, config.image_mean, config.image_std, config.rescale_factor)
    return patchify(normalized, config.patch_size, config.temporal_patch_size, config.merge_size)


# Odd frame counts (the last temporal patch pads), a total pixel budget (the size depends on the frame count),
# upscaling and downscaling.
CHUNK_CASES = [
    ((7, 50, 90), QwenVideoConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 12)),
    ((9, 120, 66), QwenVideoConfig(min_pixels=28 * 28, max_pixels=28 * 28 * 20, total_pixels=28 * 28 * 30)),
    ((6, 30, 40), QwenVideoConfig(min_pixels=28 * 28 * 6, max_pixels=28 * 28 * 9)),
]


@pytest.mark.parametrize("native", [True, False], ids=["uint8_kernel", "float_path"])
@pytest.mark.parametrize("case", range(len(CHUNK_CASES)))
def test_chunked_equals_one_piece(case, native, monkeypatch):
    shape, config = CHUNK_CASES[case]
    frames = np.random.default_rng(case).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref_rows, ref_grid = _one_piece(frames, config, native=native)
    # preprocess_video picks the resize path from the device; force the one under test.
    monkeypatch.setattr(layout_mod, "resize_frames", functools.partial(resize_frames, native_uint8=native))
    for chunk in (1, 2, 3, 4, shape[0], 100, None):  # 1 and 3 round up to whole temporal patches
        rows, grid = preprocess_video(frames, config, chunk_frames=chunk)
        assert grid == ref_grid and torch.equal(rows, ref_rows), chunk
    # The default chunk size, made small: several chunks even for this tiny video.
    monkeypatch.setattr(layout_mod, "CHUNK_BYTES", 1)
    assert torch.equal(preprocess_video(frames, config)[0], ref_rows)
    # Resizing while decoding: FrameResizer on chunks of unique frames, rows put in request order (with
    # repeats), then preprocess without resizing: the same rows, bit for bit.
    order = np.array([0, 1, 1, 2, *range(3, shape[0])])  # frame 1 requested twice
    repeated = frames[order]
    resizer = FrameResizer(config)
    pieces = [resizer(frames[i : i + 2], len(order)) for i in range(0, shape[0], 2)]
    resized = torch.cat(pieces)[torch.from_numpy(order)]
    assert resized.dtype == torch.uint8 and resized.shape[1:3] == target_size(len(order), *shape[1:], config)
    rows, grid = preprocess_video(resized, config, resized=True, chunk_frames=2)
    ref_rows, ref_grid = _one_piece(repeated, config, native=native)
    assert grid == ref_grid and torch.equal(rows, ref_rows)
    batch = preprocess_videos([resized, resized[:4]], [1.0, 2.0], config, resized=True)
    assert torch.equal(batch.pixel_values_videos[: rows.shape[0]], rows)


def test_resized_input_is_checked():
    with pytest.raises(ValueError, match="multiples of 28"):
        preprocess_video(np.zeros((2, 50, 56, 3), dtype=np.uint8), resized=True)
    with pytest.raises(ValueError, match="chunk_frames"):
        preprocess_video(np.zeros((2, 56, 56, 3), dtype=np.uint8), chunk_frames=0)


def test_preprocess_grayscale_and_bad_input():
    gray = np.full((2, 28, 28, 1), 128, dtype=np.uint8)
    rows, grid = preprocess_video(gray, QwenVideoConfig(min_pixels=1))
    rgb, _ = preprocess_video(np.repeat(gray, 3, axis=3), QwenVideoConfig(min_pixels=1))
    assert grid == (1, 2, 2) and torch.equal(rows, rgb)
    with pytest.raises(ValueError):
        preprocess_video(np.zeros((2, 28, 28, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        preprocess_videos([gray], [1.0, 2.0])


def test_config_from_pretrained(tmp_path):
    assert QwenVideoConfig.from_pretrained(tmp_path) == QwenVideoConfig()  # no config file: defaults
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
                "size": {"shortest_edge": 3136, "longest_edge": 12845056},
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_processor_type": "Qwen2VLImageProcessor",
            }
        )
    )
    config = QwenVideoConfig.from_pretrained(tmp_path)
    assert (config.min_pixels, config.max_pixels) == (3136, 12845056)
    assert config.image_mean == (0.5, 0.5, 0.5) and config.image_std == (0.25, 0.25, 0.25)
    # video_preprocessor_config.json wins, older min/max_pixels keys override `size`, keyword overrides win.
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 100, "longest_edge": 200}, "max_pixels": 300})
    )
    config = QwenVideoConfig.from_pretrained(tmp_path, total_pixels=5000)
    assert (config.min_pixels, config.max_pixels, config.total_pixels) == (100, 300, 5000)
    assert config.image_mean == OPENAI_CLIP_MEAN
    # transformers 5 saves processors nested in processor_config.json; that comes first when it has a video part.
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"}))
    assert QwenVideoConfig.from_pretrained(tmp_path).max_pixels == 300
    (tmp_path / "processor_config.json").write_text(
        json.dumps({"video_processor": {"size": {"shortest_edge": 7, "longest_edge": 8}, "merge_size": 3}})
    )
    config = QwenVideoConfig.from_pretrained(tmp_path)
    assert (config.min_pixels, config.max_pixels, config.merge_size) == (7, 8, 3)
    (tmp_path / "processor_config.json").write_text("{not json")
    with pytest.raises(ModelError, match="processor_config.json: not a readable JSON file"):
        QwenVideoConfig.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------- against transformers

HF_CASES = [
    # (frame shapes (T, H, W) of the videos in one call, min_pixels, max_pixels, max_video_tokens or None)
    ([(4, 48, 64)], 56 * 56, 28 * 28 * 16, None),
    ([(5, 48, 64), (3, 90, 40)], 56 * 56, 28 * 28 * 12, None),  # odd frame counts, two sizes
    ([(6, 56, 84)], 56 * 56, 28 * 28 * 100, None),  # already the target size: no resize
    ([(2, 30, 100)], 100 * 28 * 28, 28 * 28 * 768, None),  # upscaling
    ([(8, 120, 160)], 28 * 28 * 4, 28 * 28 * 64, 40),  # total budget: cap_pixels_per_frame=True
]


def _hf_check_script(stub_dir: str | None) -> str:
    """Source of a script that runs HF's processor and ours on HF_CASES, printing a JSON verdict per case."""
    return textwrap.dedent(
        f"""
        import json, sys
        {"sys.path.insert(0, " + repr(stub_dir) + ")" if stub_dir else ""}
        import numpy as np, torch
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
        from longrl.video.qwen_layout import QwenVideoConfig, preprocess_videos

        rng = np.random.default_rng(0)
        for shapes, min_pixels, max_pixels, max_video_tokens in {HF_CASES!r}:
            videos = [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for t, h, w in shapes]
            extra = {{}} if max_video_tokens is None else {{"max_video_tokens": max_video_tokens}}
            processor = Qwen2VLVideoProcessor(
                size={{"shortest_edge": min_pixels, "longest_edge": max_pixels}}, **extra
            )
            theirs = processor(
                videos=[torch.from_numpy(v) for v in videos],
                return_tensors="pt",
                do_sample_frames=False,
                cap_pixels_per_frame=max_video_tokens is not None,
            )
            total = None if max_video_tokens is None else int(max_video_tokens * 28 * 28 * 0.9)
            config = QwenVideoConfig(min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total)
            ours = preprocess_videos(videos, [2.0] * len(videos), config)
            a, b = theirs["pixel_values_videos"], ours.pixel_values_videos
            print(json.dumps({{
                "grid_equal": theirs["video_grid_thw"].tolist() == ours.video_grid_thw.tolist(),
                "grid": ours.video_grid_thw.tolist(),
                "dtype_equal": a.dtype == b.dtype,
                "bitwise": a.shape == b.shape and bool(torch.equal(a, b)),
            }}))
        """
    )


def _check_verdicts(output: str) -> None:
    verdicts = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(verdicts) == len(HF_CASES), output
    for verdict in verdicts:
        assert verdict == {**verdict, "grid_equal": True, "dtype_equal": True, "bitwise": True}, verdict
    assert verdicts[-1]["grid"] == [[4, 4, 6]]  # the total budget shrank the frames (8 x 12 without it)


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.skipif(not _have("transformers", "torchvision"), reason="needs transformers and torchvision")
def test_matches_transformers_video_processor():
    proc = subprocess.run([sys.executable, "-c", _hf_check_script(None)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_verdicts(proc.stdout)


# A stand-in for the few torchvision functions HF's video processor calls. `resize` follows torchvision's
# resize_image for tensors: unchanged size returns the input; uint8 bicubic runs natively on CPU; otherwise
# float32, clamp, round. `normalize` follows torchvision's normalize_image: sub then div with tensors of the
# image dtype.
TORCHVISION_STAND_IN = {
    "torchvision-0.26.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.26.0\n",
    "torchvision/__init__.py": '__version__ = "0.26.0"\nfrom . import io, transforms\n',
    "torchvision/io.py": "",
    "torchvision/transforms/__init__.py": textwrap.dedent(
        """
        import enum
        class InterpolationMode(enum.Enum):
            NEAREST = "nearest"
            NEAREST_EXACT = "nearest-exact"
            BILINEAR = "bilinear"
            BICUBIC = "bicubic"
            BOX = "box"
            HAMMING = "hamming"
            LANCZOS = "lanczos"
        from . import functional, v2
        """
    ),
    "torchvision/transforms/functional.py": "from . import InterpolationMode\ndef pil_to_tensor(pic):\n"
    "    raise NotImplementedError\n",
    "torchvision/transforms/v2/__init__.py": "from . import functional\n",
    "torchvision/transforms/v2/functional.py": textwrap.dedent(
        """
        import torch
        import torch.nn.functional as F
        from torchvision.transforms import InterpolationMode

        def resize(image, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
            if interpolation != InterpolationMode.BICUBIC:
                raise NotImplementedError(interpolation)
            *lead, c, h, w = image.shape
            if tuple(size) == (h, w):
                return image
            x = image.reshape(-1, c, h, w)
            native = x.dtype == torch.uint8 and x.device.type == "cpu"
            y = F.interpolate(
                x if native else x.float(), size=list(size), mode="bicubic", align_corners=False,
                antialias=antialias,
            )
            if image.dtype == torch.uint8 and not native:
                y = y.clamp_(0, 255).round_().to(torch.uint8)
            return y.reshape(*lead, c, *size)

        def normalize(image, mean, std, inplace=False):
            image = image if inplace else image.clone()
            mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
            return image.sub_(mean).div_(std)

        def grayscale_to_rgb(image):
            return image if image.shape[-3] == 3 else image.expand(*image.shape[:-3], 3, *image.shape[-2:])

        def __getattr__(name):
            def missing(*args, **kwargs):
                raise NotImplementedError(name)
            return missing
        """
    ),
}


@pytest.mark.skipif(
    _have("torchvision") or not _have("transformers", "PIL"),
    reason="needs transformers and PIL, and runs only where torchvision is absent",
)
def test_matches_transformers_video_processor_with_torchvision_stand_in(tmp_path):
    for name, text in TORCHVISION_STAND_IN.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    # A child process, so the stand-in never meets the other tests' transformers imports.
    script = _hf_check_script(str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_verdicts(proc.stdout)


# ------------------------------------------------------------------------------------------------------- CUDA


@requires_cuda
def test_cuda_matches_cpu():
    gen = np.random.default_rng(3)
    videos = [
        gen.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8),
        gen.integers(0, 256, (2, 90, 40, 3), np.uint8),
    ]
    config = QwenVideoConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 12)
    on_gpu = preprocess_videos([torch.from_numpy(v).cuda() for v in videos], [1.0, 2.0], config)
    on_cpu = preprocess_videos(videos, [1.0, 2.0], config)
    assert on_gpu.pixel_values_videos.is_cuda and on_gpu.video_grid_thw.is_cuda
    assert torch.equal(on_gpu.video_grid_thw.cpu(), on_cpu.video_grid_thw)
    assert torch.equal(on_gpu.second_per_grid_ts.cpu(), on_cpu.second_per_grid_ts)
    for video in videos:
        frames = torch.from_numpy(video).permute(0, 3, 1, 2).contiguous()
        h, w = target_size(frames.shape[0], frames.shape[2], frames.shape[3], config)
        # Resize: the GPU's float path against the same path on CPU, within 1 level (rounding at .5).
        gpu = resize_frames(frames.cuda(), h, w).cpu()
        cpu = resize_frames(frames, h, w, native_uint8=False)
        assert (gpu.int() - cpu.int()).abs().max() <= 1
        # Normalize + patchify of the same uint8 frames: bitwise equal on both devices.
        assert torch.equal(
            patchify(normalize_frames(cpu.cuda()))[0].cpu(), patchify(normalize_frames(cpu))[0]
        )


@requires_cuda
def test_cuda_chunked_and_resized_while_decoding_equal_one_piece():
    shape, config = CHUNK_CASES[1]
    frames = np.random.default_rng(5).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref_rows, ref_grid = _one_piece(frames, config, device="cuda")
    rows, grid = preprocess_video(frames, config, "cuda", chunk_frames=2)
    assert rows.is_cuda and grid == ref_grid and torch.equal(rows, ref_rows)
    resized = torch.cat(
        [FrameResizer(config, "cuda")(frames[i : i + 3], shape[0]) for i in range(0, shape[0], 3)]
    )
    assert resized.is_cuda
    assert torch.equal(preprocess_video(resized, config, "cuda", resized=True, chunk_frames=4)[0], ref_rows)
