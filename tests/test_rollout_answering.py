"""Examples -> videos encoded once -> k answers per question (longrl.rollout.prompts / answering)."""

from __future__ import annotations

from pathlib import Path

import pytest
from videos import write_video

import longrl.models as M
from longrl.data.schema import Example
from longrl.models.loading import load_model
from longrl.rollout import SamplingParams
from longrl.rollout.answering import answer_examples
from longrl.rollout.hf import HFEngine
from longrl.rollout.prompts import VideoSource, encode_videos, rollout_batch_for
from longrl.video.sampling import SamplingConfig


def _example(i: int, video: Path, options: list[str] | None = None) -> Example:
    opts = ["red", "green", "blue"] if options is None else options
    return Example(
        str(i), f"question {i}?", opts, "A" if opts else "red", "", "temporal", "video", video, video.name
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("answering")
    videos = [write_video(root / f"v{i}.mp4", 8, 4) for i in range(2)]
    loaded = load_model(M.make_tiny(root / "tiny"))
    return root, videos, loaded


def test_each_distinct_video_is_encoded_once(setup):
    root, videos, loaded = setup
    store = M.EmbeddingStore.for_adapter(loaded.adapter)
    source = VideoSource(SamplingConfig(num_frames=4), loaded.video_config, store=store)
    out = encode_videos(loaded.adapter, [videos[0], videos[1], videos[0], root / "missing.mp4"], source)
    assert set(out.embeddings) == set(videos)
    assert list(out.failed) == [root / "missing.mp4"] and "missing.mp4" in out.failed[root / "missing.mp4"]
    assert store.stats()["misses"] == 2
    # A second call is served from the cache: no new encode.
    encode_videos(loaded.adapter, videos, source)
    assert store.stats()["misses"] == 2


def test_answers_match_the_engine_on_the_same_batch(setup):
    root, videos, loaded = setup
    examples = [
        _example(0, videos[0]),
        _example(1, videos[1], []),
        _example(2, root / "gone.mp4"),
        _example(3, videos[0]),
    ]
    source = VideoSource(SamplingConfig(num_frames=4), loaded.video_config)
    engine = HFEngine(loaded.adapter, loaded.tokenizer)
    params = SamplingParams(n=2, max_new_tokens=6, temperature=0.0)
    answered = list(
        answer_examples(loaded.adapter, loaded.tokenizer, engine, examples, source, params, batch_size=3)
    )
    assert [a.example.id for a in answered] == ["0", "1", "2", "3"]
    assert answered[2].error and "gone.mp4" in answered[2].error and not answered[2].results
    assert all(len(a.results) == 2 for a in answered if a.error is None)

    # The reference: each batch's decodable prompts built and generated directly ([0, 1] then [3]).
    got = [r.token_ids.tolist() for a in answered if a.error is None for r in a.results]
    expected = []
    for group in ([examples[0], examples[1]], [examples[3]]):
        embeds = encode_videos(loaded.adapter, [ex.video for ex in group], source).embeddings
        batch = rollout_batch_for(loaded.adapter, loaded.tokenizer, group, [embeds[ex.video] for ex in group])
        expected += [r.token_ids.tolist() for r in engine.generate(batch, params)]
    assert got == expected


def test_open_ended_prompt_has_no_option_lines(setup):
    _, videos, loaded = setup
    source = VideoSource(SamplingConfig(num_frames=4), loaded.video_config)
    embeds = encode_videos(loaded.adapter, [videos[0]], source).embeddings[videos[0]]
    mc = rollout_batch_for(loaded.adapter, loaded.tokenizer, [_example(0, videos[0])], [embeds])
    open_ = rollout_batch_for(loaded.adapter, loaded.tokenizer, [_example(0, videos[0], [])], [embeds])
    text_mc = loaded.tokenizer.decode(mc.prompt_ids()[0])
    text_open = loaded.tokenizer.decode(open_.prompt_ids()[0])
    assert "A. red" in text_mc and "A. red" not in text_open


def test_batch_size_must_be_positive(setup):
    _, videos, loaded = setup
    source = VideoSource(SamplingConfig(num_frames=4), loaded.video_config)
    engine = HFEngine(loaded.adapter, loaded.tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        list(
            answer_examples(
                loaded.adapter, loaded.tokenizer, engine, [], source, SamplingParams(), batch_size=0
            )
        )
