"""Video file -> decoded frames -> Qwen pixels -> cached vision embeddings -> prompt -> logits, end to end.

Reference: transformers' own Qwen2_5_VLForConditionalGeneration forward from input_ids + pixel_values_videos
+ video_grid_thw + second_per_grid_ts + mm_token_type_ids (pixels from the video layer, type ids computed
here from the ids), on the tiny model loaded from a saved folder. Tolerance: exact (torch.equal) in fp32.
Cache behaviour: vision-tower calls counted with a forward hook, decodes counted by wrapping load_video.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from videos import write_text, write_video

import longrl.models as M
import longrl.models.video_inputs as VI
from longrl.errors import VideoError
from longrl.models.embedding_store import EmbeddingStore
from longrl.models.loading import load_model
from longrl.video import SamplingConfig, load_video, preprocess_videos

# 2 frames per second: the 4 s video gives 8 frames (grid 4 x 4 x 4), the 2.5 s one 4 frames at 1.6 fps
# (grid 2 x 4 x 6, second_per_grid_t 1.25): different lengths, sizes and temporal scales.
SAMPLING = SamplingConfig(fps=2.0)
QUESTIONS = [
    "What colour is the last frame?",
    "How many white bars are there at the start, and where are they?",
]
OPTIONS = [["red", "green", "blue"], ["none", "one"]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return M.tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return [
        write_video(folder / "long.mp4", num_frames=32, fps=8),
        write_video(folder / "short.mp4", num_frames=15, fps=6, width=96, height=64),
    ]


class Counted:
    """A model loaded from the tiny folder, with counters on its vision tower and on video decoding."""

    def __init__(self, tiny_dir, monkeypatch, vision_trainable: bool = False):
        self.adapter, self.tokenizer, self.video_config = load_model(
            tiny_dir, vision_trainable=vision_trainable
        )
        self.store = EmbeddingStore.for_adapter(self.adapter)
        self.tower_calls = self.decodes = 0
        self.adapter.vision_tower.register_forward_hook(self._count_tower)

        def counted_load_video(*args, **kwargs):
            self.decodes += 1
            return load_video(*args, **kwargs)

        monkeypatch.setattr(VI, "load_video", counted_load_video)

    def _count_tower(self, *_):
        self.tower_calls += 1

    def encode(self, path, sampling=SAMPLING, video_config=None):
        config = video_config or self.video_config
        return VI.encode_video_file(self.adapter, self.store, path, sampling, config)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_video_files_to_logits_equal_hf_forward(tiny_dir, clips, side, monkeypatch):
    m = Counted(tiny_dir, monkeypatch)
    assert (m.video_config.min_pixels, m.video_config.max_pixels) == (28 * 28 * 4, 28 * 28 * 16)
    embeddings = [m.encode(path) for path in clips]
    batch = VI.build_video_batch(m.adapter, m.tokenizer, embeddings, QUESTIONS, OPTIONS, side=side)
    ours = m.adapter.logits(
        batch.inputs.inputs_embeds, batch.inputs.position_ids, batch.inputs.attention_mask
    )

    # The reference: the same frames through the video layer, then HF's full forward from token ids.
    videos = [load_video(path, SAMPLING) for path in clips]
    pixels = preprocess_videos([v.frames for v in videos], [v.sampled_fps for v in videos], m.video_config)
    assert batch.video_grid_thw.tolist() == pixels.video_grid_thw.tolist() == [[4, 4, 4], [2, 4, 6]]
    assert torch.equal(batch.second_per_grid_ts, pixels.second_per_grid_ts)
    assert batch.second_per_grid_ts.tolist() == [1.0, 1.25]
    assert [e.timestamps for e in embeddings] == [tuple(v.timestamps_s.tolist()) for v in videos]
    ids, mask = batch.input_ids, batch.inputs.attention_mask
    video_token = m.adapter.model.config.video_token_id
    assert (ids == video_token).sum(1).tolist() == [16, 12]
    assert mask.sum(1).unique().numel() == 2  # different lengths: padding is exercised
    # Each row holds its own question and options.
    for row, real, question, options in zip(ids, mask, QUESTIONS, OPTIONS, strict=True):
        text = m.tokenizer.decode(row[real.bool()])
        lettered = "\n".join(f"{'ABC'[j]}. {o}" for j, o in enumerate(options))
        assert f"Question: {question}\nOptions:\n{lettered}<|im_end|>" in text
    ref = m.adapter.model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values_videos=pixels.pixel_values_videos,
        video_grid_thw=pixels.video_grid_thw,
        second_per_grid_ts=pixels.second_per_grid_ts,
        mm_token_type_ids=(ids == video_token).to(torch.int32) * 2,  # 2 = video, as HF's processor marks it
        # Qwen2.5-VL's own positions (transformers 5.x's differ on long videos; see mrope_positions).
        position_ids=batch.inputs.position_ids,
    ).logits
    assert ours.dtype == torch.float32 and torch.equal(ours, ref)


@torch.no_grad()
def test_second_call_is_a_cache_hit_and_changes_miss(tiny_dir, clips, monkeypatch):
    m = Counted(tiny_dir, monkeypatch)
    first = m.encode(clips[0])
    assert (m.tower_calls, m.decodes) == (1, 1)
    again = m.encode(clips[0])
    assert (m.tower_calls, m.decodes) == (1, 1)  # a hit neither decodes nor runs the vision tower
    assert torch.equal(again.embeds, first.embeds)
    assert (again.grid_thw, again.second_per_grid_t, again.timestamps) == (
        first.grid_thw,
        first.second_per_grid_t,
        first.timestamps,
    )

    other_frames = m.encode(clips[0], SamplingConfig(num_frames=4))
    assert (m.tower_calls, m.decodes) == (2, 2) and other_frames.grid_thw == (2, 4, 4)
    other_budget = m.encode(
        clips[0], video_config=dataclasses.replace(m.video_config, max_pixels=28 * 28 * 8)
    )
    assert m.tower_calls == 3
    assert torch.equal(other_budget.embeds, first.embeds)  # same pixels here (64x48 -> 56x56), still a miss

    next(m.adapter.vision_tower.parameters()).add_(1e-2)  # new vision weights, changed in place
    changed = m.encode(clips[0])
    assert m.tower_calls == 4 and not torch.equal(changed.embeds, first.embeds)
    assert torch.equal(m.encode(clips[0]).embeds, changed.embeds) and m.tower_calls == 4
    assert m.store.stats()["hits"] == 2 and m.store.stats()["misses"] == 4


def test_trainable_tower_bypasses_the_cache_and_gets_gradients(tiny_dir, clips, monkeypatch):
    m = Counted(tiny_dir, monkeypatch, vision_trainable=True)
    a = m.encode(clips[1])
    b = m.encode(clips[1])
    assert m.tower_calls == 2 and m.store.stats()["bypassed"] == 2
    assert torch.equal(a.embeds, b.embeds)
    a.embeds.sum().backward()
    grad = next(m.adapter.vision_tower.parameters()).grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["missing", "text_named_mp4"])
def test_bad_video_is_a_video_error_naming_the_file(tiny_dir, tmp_path, monkeypatch, kind):
    m = Counted(tiny_dir, monkeypatch)
    path = tmp_path / f"{kind}.mp4"
    if kind == "text_named_mp4":
        write_text(path)
    with pytest.raises(VideoError, match=f"{kind}.mp4"):
        m.encode(path)
    with pytest.raises(VideoError, match=f"{kind}.mp4"):
        VI.encode_video_file(m.adapter, None, path, SAMPLING, m.video_config)
    assert m.tower_calls == 0 and m.store.stats()["cache"]["entries"] == 0


@torch.no_grad()
def test_video_preprocessing_goes_through_the_adapter(tiny_dir, clips, monkeypatch):
    """A model family plugs its preprocessing in through its adapter (frame_resizer, preprocess_videos,
    processor_config_class); video_inputs names no family. Without a resizer the frames are decoded at full
    size and resized in preprocess_videos: the same embeddings, bit for bit, as resizing while decoding."""
    m = Counted(tiny_dir, monkeypatch)
    streamed = VI.encode_video_file(m.adapter, None, clips[1], SAMPLING, m.video_config)
    calls = []

    class FullSizeFrames(type(m.adapter)):
        def frame_resizer(self, config, device=None):
            calls.append("frame_resizer")
            return None

        def preprocess_videos(self, videos, sampled_fps, config, device=None, *, resized=False):
            calls.append(("preprocess_videos", resized, tuple(videos[0].shape)))
            return super().preprocess_videos(videos, sampled_fps, config, device, resized=resized)

    full = VI.encode_video_file(FullSizeFrames(m.adapter.model), None, clips[1], SAMPLING, m.video_config)
    assert calls == ["frame_resizer", ("preprocess_videos", False, (4, 64, 96, 3))]  # 2.5 s at 2 fps: 4
    assert torch.equal(full.embeds, streamed.embeds) and full.grid_thw == streamed.grid_thw == (2, 4, 6)
    video, pixels = VI.load_video_pixels(m.adapter, clips[1], SAMPLING, m.video_config)
    assert tuple(video.frames.shape) == (4, 56, 84, 3)  # resized while decoding
    assert pixels.video_grid_thw.tolist() == [[2, 4, 6]]
    assert type(m.adapter).video_config_from_folder(tiny_dir) == m.video_config
