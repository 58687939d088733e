"""generate-data with local models: the tiny Qwen2.5-VL as the `hf` captioner, and as the filter model
(rollout engine "hf") on real and synthetic videos.

References: a caption must be exactly what `HFChatBackend.chat` answers for the same frames and prompt
(greedy decoding); the filter's scores must be exactly those of `answer_examples` + `accuracy_reward` run
here on the same questions, batches and seed; split files must load with `load_examples`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from chat_server import ChatServer, Reply
from videos import write_video

from longrl.data import load_examples
from longrl.data.generate import BackendSpec, GenerateConfig, run_pipeline
from longrl.data.generate.filter import score_responses

CATEGORIES = ("temporal", "goal")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from longrl.models import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reasoner_script(request):
    text = request.text
    if "rewrite the reasoning" in text.lower():
        return Reply(json.dumps({"reasoning": "At 00:02 the bars change, then at 00:11 they stop: B."}))
    category = re.search(r'with "category": "(\w+)"', text).group(1)
    return Reply(
        json.dumps(
            {
                "question": f"Which {category} change happens in the video?",
                "options": ["bars turn on", "bars turn off", "colour turns red", "nothing changes"],
                "answer": "B",
                "reasoning": "At 00:02 bars turn on; at 00:11 they turn off, so B.",
                "category": category,
            }
        )
    )


def reference_scores(tiny_dir: Path, questions: list[dict], video_root: Path, cfg: GenerateConfig) -> dict:
    """Pass rates computed here through the public answering path, batched as the filter stage batches."""
    from longrl.data.generate.records import example_of
    from longrl.models import load_model
    from longrl.rollout.answering import answer_examples
    from longrl.rollout.base import SamplingParams
    from longrl.rollout.hf import HFEngine
    from longrl.rollout.prompts import VideoSource
    from longrl.video import SamplingConfig

    adapter, tok, video_config = load_model(tiny_dir)
    ordered = sorted(questions, key=lambda q: (q["video"], q["id"]))
    examples = [example_of(q, video_root) for q in ordered]
    params = SamplingParams(
        n=cfg.filter_samples, max_new_tokens=cfg.filter_max_tokens, temperature=cfg.filter_temperature,
        seed=cfg.seed,
    )  # fmt: skip
    source = VideoSource(sampling=SamplingConfig(num_frames=cfg.filter_frames), video_config=video_config)
    out = {}
    for answered in answer_examples(
        adapter, tok, HFEngine(adapter, tok), examples, source, params, batch_size=cfg.filter_batch_size
    ):
        assert answered.error is None
        out[answered.example.id] = score_responses(
            answered.texts, answered.example.answer, answered.example.options
        )
    return out


def test_hf_captioner_and_filter_on_real_videos(tmp_path, tiny_dir):
    from longrl.data.generate.caption import decode_clip_frames
    from longrl.data.generate.prompts import CAPTION_SYSTEM, caption_prompt
    from longrl.llm import make_backend, system_message, user_message

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "v.mp4", num_frames=24, fps=2)  # 12 s: clips 0-10 and 10-12
    out = tmp_path / "out"
    with ChatServer(reasoner_script) as server:
        cfg = GenerateConfig(
            out=out, videos=videos, captioner=BackendSpec("hf", str(tiny_dir)),
            reasoner=BackendSpec("openai", "reasoner", server.url), categories=CATEGORIES, per_video=2,
            caption_frames=2, caption_max_tokens=12, concurrency=2, filter_model=tiny_dir, filter_samples=3,
            filter_frames=4, filter_max_tokens=8, filter_batch_size=2, device="cpu", dtype="float32",
        )  # fmt: skip
        result = run_pipeline(cfg, show_progress=False)
        # The caption stage asked the local model, not the server.
        assert all("describe short video clips" not in r.text for r in server.requests)

    captions = rows(out / "captions.jsonl")
    assert len(captions) == 2 and {c["backend"] for c in captions} == {"hf:tiny"}
    backend = make_backend("hf", model=str(tiny_dir))
    clips = rows(out / "clips.jsonl")
    for decoded in decode_clip_frames(str(videos / "v.mp4"), clips, 2, cfg.caption_image_size, "auto"):
        clip = decoded.clip
        messages = [
            system_message(CAPTION_SYSTEM),
            user_message(
                caption_prompt(clip["start_s"], clip["end_s"], decoded.times_s), list(decoded.frames)
            ),
        ]
        expected = " ".join(backend.chat(messages, max_tokens=12, temperature=0.0, seed=cfg.seed).split())
        recorded = next(c for c in captions if c["id"] == clip["id"])
        assert recorded["caption"] == expected and expected

    filtered = {r["id"]: r for r in rows(out / "filtered.jsonl")}
    questions = rows(out / "refined.jsonl")
    assert sorted(filtered) == sorted(q["id"] for q in questions)
    expected = reference_scores(tiny_dir, questions, videos, cfg)
    for rid, record in filtered.items():
        assert record["samples"] == 3
        assert {k: record[k] for k in ("pass_rate", "scores", "answers")} == expected[rid]
    manifest = result.manifest
    assert manifest["filter"]["questions"] == 2 and manifest["stages"]["filter"]["complete"]
    total = sum(manifest["splits"][s]["rows"] for s in ("sft", "rl", "eval"))
    assert total == 2


def test_synthetic_source_filter_resume_and_split(tmp_path, tiny_dir):
    out = tmp_path / "out"
    base = dict(
        out=out, source="synthetic", synthetic_videos=3, synthetic_frames=64, synthetic_fps=2,
        categories=CATEGORIES, per_video=2, filter_model=tiny_dir, filter_samples=2, filter_frames=4,
        filter_max_tokens=8, filter_batch_size=4, eval_fraction=0.3, device="cpu", dtype="float32",
    )  # fmt: skip
    first = run_pipeline(GenerateConfig(**base), show_progress=False)
    assert [s.name for s in first.stages] == ["synthetic", "filter", "split"]
    questions = rows(out / "synthetic_questions.jsonl")
    assert len(questions) == 6 and all(q["reasoning"] for q in questions)
    assert len(list((out / "videos").glob("*.mp4"))) == 3
    filtered = rows(out / "filtered.jsonl")
    assert sorted(r["id"] for r in filtered) == sorted(q["id"] for q in questions)

    # A run killed in the filter stage leaves some questions without a record: only those are answered.
    lines = (out / "filtered.jsonl").read_text().splitlines(keepends=True)
    (out / "filtered.jsonl").write_text("".join(lines[:4]) + lines[4][:20])  # 4 whole lines + a torn one
    second = run_pipeline(GenerateConfig(**{**base, "stages": ("filter", "split")}), show_progress=False)
    stats = {s.name: s for s in second.stages}
    assert (stats["filter"].skipped, stats["filter"].done) == (4, 2)
    refiltered = rows(out / "filtered.jsonl")
    assert len(refiltered) == 6 and len({r["id"] for r in refiltered}) == 6

    splits = second.manifest["splits"]
    assert sum(splits[s]["rows"] for s in ("sft", "rl", "eval")) == 6
    assert splits["eval"]["rows"] >= 2  # at least one whole video (2 questions) held out
    loaded = {}
    for name in ("sft", "eval"):
        examples, report = load_examples(out / f"{name}.jsonl", None, on_bad_row="fail")  # root = out
        assert report.kept == splits[name]["rows"]
        loaded[name] = examples
    assert {ex.video for ex in loaded["sft"]}.isdisjoint({ex.video for ex in loaded["eval"]})
    by_id = {q["id"]: q for q in questions}
    for ex in loaded["sft"] + loaded["eval"]:
        q = by_id[ex.id]
        assert (ex.question, ex.options, ex.answer, ex.category) == (
            q["question"], q["options"], q["answer"], q["category"],
        )  # fmt: skip
