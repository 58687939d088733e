"""The vllm engine's settings in a training run, without vLLM (so these run in the main suite too).

- rollout.gpu_memory_utilization / max_model_len / enforce_eager: defaults, `--set`, and bad values as one
  ConfigError line (exit code 2 through the CLI).
- The derived max_model_len (`rollout_max_model_len`) against the real thing: the prompts the trainer builds
  (`rollout_batch_for` over the cached video embeddings of real videos) plus max_new_tokens must fit it.
- `video_token_bound` against hand-computed values and against `inspect_video` of real videos of several
  sizes (the tokens a video really takes never exceed the bound).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from longrl.cli.train import build_config

from longrl.errors import ConfigError
from longrl.models import load_model
from longrl.rollout.prompts import VideoSource, encode_videos, rollout_batch_for
from longrl.rollout.vllm import frame_token_bound, rollout_max_model_len, video_token_bound
from longrl.train.config import RLConfig
from longrl.train.config_io import load_config
from longrl.video.cost import inspect_video
from longrl.video.qwen_layout import MAX_ASPECT_RATIO, QwenVideoConfig, smart_resize
from longrl.video.sampling import SamplingConfig
from tests.helpers import run_cli
from tests.train_fixtures import make_train_setup
from tests.videos import write_video

TINY_VIDEO = QwenVideoConfig(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)  # the tiny model's budget


def test_defaults_and_set():
    def settings(rollout) -> tuple:
        return rollout.gpu_memory_utilization, rollout.max_model_len, rollout.enforce_eager

    assert settings(RLConfig().rollout) == (None, None, None)
    sets = ["rollout.gpu_memory_utilization=0.4", "rollout.max_model_len=8192", "rollout.enforce_eager=true"]
    assert settings(build_config(RLConfig, None, sets, {}).rollout) == (0.4, 8192, True)


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("rollout.gpu_memory_utilization", "0", "rollout.gpu_memory_utilization must be > 0.0"),
        ("rollout.gpu_memory_utilization", "1.5", r"rollout.gpu_memory_utilization must be in \(0, 1\]"),
        ("rollout.gpu_memory_utilization", "nan", "rollout.gpu_memory_utilization must be a finite number"),
        ("rollout.max_model_len", "0", "rollout.max_model_len must be >= 1"),
        ("rollout.max_model_len", "200", r"rollout.max_model_len \(200\) must exceed rollout.max_new_tokens"),
        ("rollout.enforce_eager", "sometimes", "rollout.enforce_eager"),
    ],
)
def test_bad_values_are_one_config_error(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(RLConfig, None, {key: value})
    assert "\n" not in str(info.value)


def test_cli_bad_value_is_one_line_and_exit_2(tmp_path):
    result = run_cli("train", "rl", "--set", "rollout.gpu_memory_utilization=1.5", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rollout.gpu_memory_utilization"), result.stderr


@pytest.mark.parametrize(
    "max_pixels,video,want",
    [
        (768 * 784, QwenVideoConfig(), 768),  # Qwen's budget: a frame never exceeds max_pixels
        # the tiny budget: a 200:1 frame scaled down keeps a short side of 28 px: 28 * sqrt(16 * 784 * 200)
        (16 * 784, TINY_VIDEO, 56),
        # min_pixels = max_pixels = 100 units: a 200:1 frame scaled up, both sides rounded up (100 + 0.7 +
        # 141.4 + 1 units) beats the thin case (141.4)
        (100 * 784, QwenVideoConfig(min_pixels=100 * 784, max_pixels=100 * 784), 243),
    ],
)
def test_frame_token_bound_hand_computed(max_pixels, video, want):
    assert frame_token_bound(max_pixels, video) == want


@pytest.mark.parametrize(
    "max_pixels,video",
    [(16 * 784, TINY_VIDEO), (768 * 784, QwenVideoConfig()), (134 * 784, QwenVideoConfig())],
    ids=["tiny", "qwen", "qwen-near-min"],
)
def test_frame_token_bound_covers_smart_resize(max_pixels, video):
    """Reference: `smart_resize` itself over a grid of frame sizes, thin ones up to the 200:1 limit included."""
    sizes = [(h, w) for h in range(2, 1500, 9) for w in range(2, 1500, 11)]
    sizes += [(h, 200 * h - d) for h in range(1, 100) for d in (0, 1, 5, 13)]
    worst = 0
    for h, w in sizes + [(w, h) for h, w in sizes]:
        if max(h, w) / min(h, w) <= MAX_ASPECT_RATIO:
            new_h, new_w = smart_resize(h, w, video.factor, video.min_pixels, max_pixels)
            worst = max(worst, new_h * new_w // video.factor**2)
    bound = frame_token_bound(max_pixels, video)
    print(f"bound {bound}, worst frame of the grid {worst}")
    assert worst <= bound


@pytest.mark.parametrize(
    "sampling,video,want",
    [
        (SamplingConfig(num_frames=64), QwenVideoConfig(), 32 * 768),  # 32 temporal patches of 768
        (SamplingConfig(num_frames=3), QwenVideoConfig(), 2 * 768),  # rounded up to the frame multiple
        (SamplingConfig(fps=2.0, max_frames=10), QwenVideoConfig(), 5 * 768),  # fps mode: up to max_frames
        (SamplingConfig(num_frames=4), TINY_VIDEO, 2 * 56),
        # total_pixels (2 x 768 units) shared by the frames: 8 frames get 384 units each (4 x 384), but a short
        # video (on_short "cap") can give 5 frames = 3 patches of floor(1536 * 2 / 5) = 614 units: the most
        (SamplingConfig(num_frames=8), QwenVideoConfig(total_pixels=2 * 768 * 784), 3 * 614),
    ],
)
def test_video_token_bound_hand_computed(sampling, video, want):
    assert video_token_bound(sampling, video) == want


@pytest.mark.parametrize("sampling", [SamplingConfig(num_frames=4), SamplingConfig(fps=3.0, max_frames=6)])
def test_video_token_bound_covers_real_videos(tmp_path, sampling):
    for video, sizes in [
        (TINY_VIDEO, [(64, 48), (320, 240), (48, 400), (32, 28)]),
        (QwenVideoConfig(), [(1280, 720)]),
    ]:
        bound = video_token_bound(sampling, video)
        tokens = [
            inspect_video(write_video(tmp_path / f"{w}x{h}.mp4", 8, 4, w, h), sampling, video).visual_tokens
            for w, h in sizes
        ]
        print(f"bound {bound}, real {tokens}")
        assert max(tokens) <= bound
    assert max(tokens) >= 0.9 * bound  # a large video under Qwen's budget comes near the bound


def test_rollout_max_model_len_fits_the_real_prompts(tmp_path):
    paths = make_train_setup(tmp_path, num_rows=6, num_videos=2)
    adapter, tokenizer, video_config = load_model(paths["model"])
    from longrl.data.dataset import load_examples

    examples, _ = load_examples(paths["data"], paths["video_root"])
    source = VideoSource(SamplingConfig(num_frames=4), video_config, isolate=False)
    encoded = encode_videos(adapter, [ex.video for ex in examples], source)
    videos = [encoded.embeddings[Path(ex.video)] for ex in examples]
    longest = max(len(ids) for ids in rollout_batch_for(adapter, tokenizer, examples, videos).prompt_ids())

    bound = rollout_max_model_len(adapter, tokenizer, examples, source, max_new_tokens=16)
    print(f"longest prompt {longest} + 16 new tokens; derived max_model_len {bound}")
    # Loose by design on the tiny budget: its worst frame (200:1) takes 56 tokens per frame pair, these 16.
    assert longest + 16 <= bound < 3 * (longest + 16)
    # Never above what the model can take (the tiny model's max_position_embeddings).
    assert rollout_max_model_len(adapter, tokenizer, examples, source, max_new_tokens=10**6) == 32768
