"""The filter stage samples each question from a seed of its own (`--seed` and its id): its k samples are
the same whichever questions are answered with it or before it, so a resumed run, which answers only the
questions left, samples them exactly as an uninterrupted run would. And every knob the samples depend on
is a stage setting: continuing an --out with another filter model (or samples, temperature...) is refused.

References: the tiny Qwen2.5-VL answering the same question alone and among others (token ids must be
identical); a control shows that the old scheme (one seed for a whole batch) does change them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from videos import write_video

from longrl.data.generate import GenerateConfig
from longrl.data.generate.filter import answer_each, question_seed
from longrl.data.generate.pipeline import _check_settings
from longrl.data.generate.records import STAGE_FILES
from longrl.data.schema import Example
from longrl.errors import ConfigError


def _example(qid: str, video: Path) -> Example:
    return Example(
        id=qid,
        question=f"What happens in the video ({qid})?",
        options=["bars turn on", "bars turn off", "nothing"],
        answer="B",
        reasoning="",
        category="temporal",
        data_type="video",
        video=video.resolve(),
        video_rel=video.name,
    )


def test_a_questions_samples_do_not_depend_on_its_batch(tmp_path):
    from longrl.models import EmbeddingStore, load_model, make_tiny
    from longrl.rollout.answering import answer_examples
    from longrl.rollout.base import SamplingParams
    from longrl.rollout.hf import HFEngine
    from longrl.rollout.prompts import VideoSource
    from longrl.video import SamplingConfig

    loaded = load_model(make_tiny(tmp_path / "tiny"))
    adapter, tok = loaded.adapter, loaded.tokenizer
    engine = HFEngine(adapter, tok)
    source = VideoSource(
        sampling=SamplingConfig(num_frames=2),
        video_config=loaded.video_config,
        store=EmbeddingStore.for_adapter(adapter),
    )
    video = write_video(tmp_path / "a.mp4", num_frames=4, fps=2)
    q1, q2, q3 = (_example(qid, video) for qid in ("q1", "q2", "q3"))
    params = SamplingParams(n=3, max_new_tokens=6, temperature=1.0)

    def tokens(answers, qid: str) -> list[list[int]]:
        (answered,) = [a for a in answers if a.example.id == qid]
        assert answered.error is None and len(answered.results) == 3
        return [list(r.token_ids) for r in answered.results]

    full_run = list(answer_each(adapter, tok, engine, [q1, q2, q3], source, params, seed=7))
    resumed = list(answer_each(adapter, tok, engine, [q3], source, params, seed=7))  # q1, q2 done before
    reordered = list(answer_each(adapter, tok, engine, [q3, q1], source, params, seed=7))
    assert tokens(full_run, "q3") == tokens(resumed, "q3") == tokens(reordered, "q3")
    assert tokens(full_run, "q1") == tokens(reordered, "q1")
    # Each question's own seed: equal to answering it alone with question_seed, different across questions.
    assert question_seed(7, "q3") != question_seed(7, "q1") and question_seed(7, "q3") != question_seed(
        8, "q3"
    )
    other_seed = list(answer_each(adapter, tok, engine, [q3], source, params, seed=8))
    assert tokens(other_seed, "q3") != tokens(resumed, "q3")

    # Control (the old scheme): one seed for a batch; q3 after q1, q2 in a batch samples differently than
    # q3 alone, which is why a resumed run could not reproduce an uninterrupted one.
    shared = SamplingParams(n=3, max_new_tokens=6, temperature=1.0, seed=7)
    batched = list(answer_examples(adapter, tok, engine, [q1, q2, q3], source, shared, batch_size=3))
    alone = list(answer_examples(adapter, tok, engine, [q3], source, shared, batch_size=3))
    assert tokens(batched, "q3") != tokens(alone, "q3")


def _made_with(out: Path, cfg: GenerateConfig) -> dict:
    """A manifest whose filter stage ran with `cfg`, and a non-empty filter record file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / STAGE_FILES["filter"]).write_text(json.dumps({"id": "q1", "pass_rate": 0.5}) + "\n")
    return {"stages": {"filter": {"complete": False, "settings": cfg.stage_settings("filter")}}}


def test_filter_settings_refuse_another_model_or_sampling(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (tmp_path / "model_a").mkdir()
    base = GenerateConfig(out=out, filter_model=tmp_path / "model_a", filter_samples=4)
    manifest = _made_with(out, base)
    settings = base.stage_settings("filter")
    assert settings["filter_model"] == str((tmp_path / "model_a").resolve())
    assert {"filter_samples", "filter_frames", "filter_temperature", "filter_max_tokens"} <= set(settings)

    # The same model named by another path spelling continues.
    monkeypatch.chdir(tmp_path)
    same = GenerateConfig(out=out, filter_model=Path("model_a"), filter_samples=4)
    assert _check_settings(same, manifest, "filter") == settings

    changes = {
        "filter_model": (tmp_path / "model_b", "--filter-model"),
        "filter_samples": (5, "--filter-samples"),
        "filter_frames": (8, "--filter-frames"),
        "filter_temperature": (0.5, "--filter-temperature"),
        "filter_max_tokens": (64, "--filter-max-tokens"),
        "seed": (3, "--seed"),
    }
    for field_name, (value, flag) in changes.items():
        changed = GenerateConfig(**{**base.__dict__, field_name: value})
        with pytest.raises(ConfigError) as refused:
            _check_settings(changed, manifest, "filter")
        message = str(refused.value)
        assert flag in message and "\n" not in message, message
