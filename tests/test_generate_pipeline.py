"""The whole `generate-data` pipeline on videos the test writes, against a real HTTP chat server on
127.0.0.1 (tests/chat_server.py) scripted per request: good JSON, malformed JSON, an answer outside the
options, 429 then success, 500, a reply slower than the timeout, a timestamp past the end of the video.

References: what the script answers decides, item by item, what must be in the records and in
rejected.jsonl (with which reason) and how many requests each item costs (retries + repairs); the manifest's
counts are checked against those hand counts; the split files are read back with `load_examples`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from pathlib import Path

import pytest
from chat_server import ChatServer, Reply, Sleep, Status
from helpers import run_cli_here
from rich.console import Console
from videos import write_text, write_video

from longrl.data import load_examples
from longrl.data.generate import BackendSpec, GenerateConfig, run_pipeline, summary_lines, summary_table
from longrl.errors import ConfigError

KEY_ENV = "LONGRL_TEST_GENERATE_KEY"
SECRET = "sk-generate-5ecret-never-written-0123456789"
CATEGORIES = ("temporal", "goal", "spatial", "plot")


def good_question(video: str, category: str, *, stamp: str = "00:05", answer: str = "B") -> str:
    return json.dumps(
        {
            "question": f"Q {video} {category}: what happens after the start of the video?",
            "options": ["a red square", "a blue circle", "nothing at all", "a green line"],
            "answer": answer,
            "reasoning": f"At {stamp} the caption shows a blue circle, so the answer is {answer}.",
            "category": category,
        }
    )


def refined(text: str = "At 00:05 a blue circle shows; answer B.") -> str:
    return json.dumps({"reasoning": text})


class Script:
    """Answers by request content: caption / question (video by duration, category) / refine (by question)."""

    def __init__(self, *, healed: bool = False) -> None:
        self.healed = healed  # True: the failing server has been fixed (every question answered well)
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []  # (key, request text) in arrival order

    def count(self, key: str, text: str) -> int:
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            self.log.append((key, text))
            return self.calls[key]

    def __call__(self, request):
        text = request.text
        if "describe short video clips" in text:
            clip = re.search(r"the clip (\d\d:\d\d)-(\d\d:\d\d)", text).group(1, 2)
            n = self.count(f"caption {clip[0]}-{clip[1]}", text)
            if clip == ("00:10", "00:20") and n == 1:
                return Status(429, "slow down", retry_after=0.01)
            return Reply(f"A blue circle moves right during {clip[0]} to {clip[1]}.")
        if "rewrite the reasoning" in text.lower():
            question = re.search(r"Q (\w) (\w+):", text).group(1, 2)
            self.count(f"refine {question[0]} {question[1]}", text)
            if question == ("a", "goal"):
                return Reply("not json at all")
            return Reply(refined())
        video = "a" if "(25.0 s)" in text else "b"
        category = re.search(r'with "category": "(\w+)"', text).group(1)
        n = self.count(f"question {video} {category}", text)
        if self.healed or (video, category) == ("a", "temporal"):
            return Reply(good_question(video, category))
        if (video, category) == ("a", "goal"):
            return Reply("{not json") if n == 1 else Reply(good_question(video, category, answer="C"))
        if (video, category) == ("a", "spatial"):
            return Reply(good_question(video, category, answer="E"))
        if (video, category) == ("a", "plot"):
            return Status(500, "internal error")
        if (video, category) == ("b", "temporal"):
            return Reply('{"question": "unterminated')
        if (video, category) == ("b", "goal"):
            return Sleep(3.0, then=Reply(good_question(video, category)))
        if (video, category) == ("b", "spatial"):
            return Reply(good_question(video, category, stamp="05:00"))
        return Reply(good_question(video, category))  # b plot


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", num_frames=50, fps=2)  # 25 s: clips 0-10, 10-20, 20-25
    (root / "sub").mkdir()
    write_video(root / "sub" / "b.mp4", num_frames=40, fps=2)  # 20 s: clips 0-10, 10-20
    write_text(root / "broken.mp4")
    return root


def make_config(out: Path, videos: Path, url: str, **overrides) -> GenerateConfig:
    options = dict(
        out=out,
        videos=videos,
        captioner=BackendSpec("openai", "captioner-model", url),
        reasoner=BackendSpec("openai", "reasoner-model", url),
        api_key_env=KEY_ENV,
        timeout_s=1.0,
        retries=1,
        backoff_s=0.01,
        concurrency=3,
        categories=CATEGORIES,
        per_video=4,
        caption_frames=2,
        eval_fraction=0.5,
    )
    options.update(overrides)
    return GenerateConfig(**options)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pipeline_records_rejections_manifest_and_splits(tmp_path, video_dir, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    script = Script()
    text = io.StringIO()
    console = Console(file=text, width=200)
    with ChatServer(script) as server:
        result = run_pipeline(make_config(out, video_dir, server.url), console=console)
        console.print(summary_table(result.stages))
        console.print("\n".join(summary_lines(result.stages)))
    assert not server.script_errors
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {SECRET}"}

    # scan: the text file named .mp4 is rejected with the decoder's reason; the two videos continue.
    videos = rows(out / "videos.jsonl")
    assert sorted(v["path"] for v in videos) == ["a.mp4", "sub/b.mp4"]
    a = next(v for v in videos if v["path"] == "a.mp4")
    assert (a["num_frames"], a["fps"], a["duration_s"], a["width"], a["height"]) == (50, 2.0, 25.0, 64, 48)
    assert len(a["sha256"]) == 64
    rejected = rows(out / "rejected.jsonl")
    scan_rejects = [r for r in rejected if r["stage"] == "scan"]
    assert [r["reason"] for r in scan_rejects] == ["video_unreadable"]
    assert "broken.mp4" in scan_rejects[0]["detail"]

    # segment + caption: 3 + 2 clips, all captioned; the 429 clip cost two requests, the others one.
    clips = rows(out / "clips.jsonl")
    assert len(clips) == 5
    captions = rows(out / "captions.jsonl")
    assert sorted(c["id"] for c in captions) == sorted(c["id"] for c in clips)
    assert script.calls["caption 00:10-00:20"] == 2 + 1  # a: 429 then success; b: success
    assert script.calls["caption 00:00-00:10"] == 2 and script.calls["caption 00:20-00:25"] == 1
    caption_requests = [r for r in server.requests if "describe short video clips" in r.text]
    assert all(len(r.image_urls) == 2 for r in caption_requests)  # --caption-frames 2

    # questions: per item, what the script answered.
    questions = {q["id"].split("/")[-1]: q for q in rows(out / "questions.jsonl")}
    kept = sorted(f"{q['video']} {q['category']}" for q in questions.values())
    assert kept == ["a.mp4 goal", "a.mp4 temporal", "sub/b.mp4 plot"]
    goal = next(q for q in questions.values() if q["video"] == "a.mp4" and q["category"] == "goal")
    assert (goal["answer"], goal["attempts"]) == ("C", 2)  # repaired after malformed JSON
    assert goal["options"] == ["a red square", "a blue circle", "nothing at all", "a green line"]
    repair_text = [t for k, t in script.log if k == "question a goal"][1]
    assert "not valid JSON" in repair_text  # the validation error went back to the model
    reasons = {
        (r["id"].split("/")[0].rsplit("-", 1)[0], r["id"].rsplit("-", 1)[-1]): (r["reason"], r["detail"])
        for r in rejected
        if r["stage"] == "questions"
    }
    assert {k: v[0] for k, v in reasons.items()} == {
        ("a", "spatial"): "answer_not_in_options",
        ("a", "plot"): "backend_error",
        ("sub_b", "temporal"): "invalid_json",
        ("sub_b", "goal"): "backend_error",
        ("sub_b", "spatial"): "timestamp_outside_video",
    }
    assert "HTTP 500" in reasons[("a", "plot")][1]
    assert "timeout" in reasons[("sub_b", "goal")][1]
    # requests: 1 + repair for invalid replies; retries + 1 for backend failures
    assert script.calls["question a spatial"] == 2 and script.calls["question b temporal"] == 2
    assert script.calls["question a plot"] == 2 and script.calls["question b goal"] == 2
    assert script.calls["question a temporal"] == 1 and script.calls["question b plot"] == 1

    # refine: the unusable rewrite keeps the original reasoning.
    refined_rows = {f"{q['video']} {q['category']}": q for q in rows(out / "refined.jsonl")}
    assert refined_rows["a.mp4 goal"]["refined"] is False
    assert refined_rows["a.mp4 goal"]["reasoning"] == goal["reasoning"]
    assert refined_rows["a.mp4 temporal"]["reasoning"] == "At 00:05 a blue circle shows; answer B."

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["scan"]["records"] == 2 and manifest["stages"]["scan"]["rejected"] == 1
    assert manifest["stages"]["caption"]["records"] == 5 and manifest["stages"]["caption"]["rejected"] == 0
    assert manifest["stages"]["questions"]["records"] == 3
    assert manifest["stages"]["questions"]["waiting_for_retry"] == 2
    assert manifest["rejections"]["questions"] == {
        "answer_not_in_options": 1, "backend_error": 2, "invalid_json": 1, "timestamp_outside_video": 1,
    }  # fmt: skip
    assert manifest["rejections"]["scan"] == {"video_unreadable": 1}
    assert manifest["categories"] == {"goal": 1, "plot": 1, "temporal": 1}
    assert manifest["refine"]["kept_original"] == 1 and manifest["refine"]["kept_original_reasons"] == {
        "invalid_json": 1
    }
    assert all(
        manifest["stages"][s]["complete"]
        for s in ("scan", "segment", "caption", "questions", "refine", "split")
    )
    assert "filter" not in manifest["stages"]

    # split: whole videos in eval; everything else in sft (no filter results); files load as they are.
    splits = manifest["splits"]
    assert splits["rl"]["rows"] == 0
    assert splits["sft"]["rows"] + splits["eval"]["rows"] == 3 and splits["eval"]["rows"] >= 1
    loaded = {}
    for name in ("sft", "eval"):
        examples, report = load_examples(out / f"{name}.jsonl", video_dir, on_bad_row="fail")
        loaded[name] = examples
        assert report.kept == splits[name]["rows"]
    assert {ex.video_rel for ex in loaded["sft"]}.isdisjoint({ex.video_rel for ex in loaded["eval"]})
    example = next(ex for ex in loaded["sft"] + loaded["eval"] if ex.id.endswith("goal"))
    assert (example.answer, example.options[2], example.category) == ("C", "nothing at all", "goal")
    raw = next(
        r for name in ("sft", "eval") for r in rows(out / f"{name}.jsonl") if r["problem_id"] == example.id
    )
    assert list(raw) == [
        "problem_id",
        "problem",
        "data_type",
        "problem_type",
        "reasoning",
        "videos",
        "answer",
    ]
    assert raw["answer"] == "<answer>C</answer>" and raw["problem"].endswith("D. a green line")

    # the API key is nowhere: not in any output file, the console, or the log records.
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in text.getvalue()
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    assert "questions: rejected answer_not_in_options 1, backend_error 2" in text.getvalue()  # the summary

    # A second run of the same command asks again only what failed with backend errors (the server is
    # fixed now); everything else is done and is not requested again.
    script2 = Script(healed=True)
    with ChatServer(script2) as server2:
        result2 = run_pipeline(make_config(out, video_dir, server2.url), console=console)
    assert script2.calls == {
        "question a plot": 1,
        "question b goal": 1,
        "refine a plot": 1,
        "refine b goal": 1,
    }
    assert len(server2.requests) == 4
    questions2 = rows(out / "questions.jsonl")
    assert len(questions2) == 5 and len({q["id"] for q in questions2}) == 5
    rejected2 = rows(out / "rejected.jsonl")
    assert sorted(r["reason"] for r in rejected2 if r["stage"] == "questions") == [
        "answer_not_in_options", "invalid_json", "timestamp_outside_video",
    ]  # fmt: skip
    manifest2 = result2.manifest
    assert manifest2["stages"]["questions"]["records"] == 5
    assert manifest2["stages"]["questions"]["waiting_for_retry"] == 0
    assert manifest2["rejections"]["questions"] == {
        "answer_not_in_options": 1, "invalid_json": 1, "timestamp_outside_video": 1,
    }  # fmt: skip
    assert manifest2["splits"]["sft"]["rows"] + manifest2["splits"]["eval"]["rows"] == 5
    stats = {s.name: s for s in result2.stages}
    assert (stats["caption"].skipped, stats["caption"].done) == (5, 0)
    assert (stats["questions"].skipped, stats["questions"].done) == (6, 2)


def test_user_mistakes_are_config_errors(tmp_path, video_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match="needs --captioner"):
        run_pipeline(make_config(tmp_path / "o1", video_dir, url, captioner=None), show_progress=False)
    with pytest.raises(ConfigError, match="--stages: bogus"):
        run_pipeline(make_config(tmp_path / "o2", video_dir, url, stages=("bogus",)), show_progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a generate-data output folder"):
        run_pipeline(make_config(foreign, video_dir, url), show_progress=False)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    with pytest.raises(ConfigError, match="reads the output of the segment stage"):
        run_pipeline(make_config(tmp_path / "o3", video_dir, url, stages=("caption",)), show_progress=False)


def test_scan_list_file_duplicates_and_outside_root(tmp_path, video_dir):
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "copy.mp4").write_bytes((video_dir / "a.mp4").read_bytes())
    (listed / "same.mp4").write_bytes((video_dir / "a.mp4").read_bytes())
    list_file = listed / "videos.txt"
    list_file.write_text(
        f"# my videos\ncopy.mp4\nsame.mp4  # a second copy\n{video_dir / 'sub' / 'b.mp4'}\n\n"
    )
    out = tmp_path / "out"
    url = "http://127.0.0.1:9/v1"
    result = run_pipeline(make_config(out, list_file, url, stages=("scan",)), show_progress=False)
    assert result.manifest["video_root"] == str(listed.resolve())
    assert [v["path"] for v in rows(out / "videos.jsonl")] == ["copy.mp4"]
    reasons = {r["reason"]: r["detail"] for r in rows(out / "rejected.jsonl")}
    assert set(reasons) == {"duplicate_content", "outside_video_root"}
    assert "same.mp4 has the same bytes as copy.mp4" in reasons["duplicate_content"]
    assert "b.mp4 is not inside the video root" in reasons["outside_video_root"]
    # A rerun has nothing to do: every file is recorded or finally rejected.
    again = run_pipeline(make_config(out, list_file, url, stages=("scan",)), show_progress=False)
    assert (again.stages[0].skipped, again.stages[0].done, again.stages[0].rejected) == (3, 0, 0)
    # An API key variable that is not set is a mistake found before any work.
    with pytest.raises(ConfigError, match=f"environment variable {KEY_ENV}"):
        run_pipeline(make_config(tmp_path / "o2", video_dir, url), show_progress=False)


def test_cli_synthetic_question_style(tmp_path, capsys):
    """`--synthetic-questions ordinal` reaches the generator; an unknown style is one line and exit 2."""
    out = tmp_path / "ordinal"
    base = ("generate-data", "--source", "synthetic", "--synthetic-videos", "2", "--synthetic-frames", "64")
    base += ("--synthetic-fps", "2", "--stages", "synthetic", "--quiet")
    code, err = run_cli_here(capsys, *base, "--out", str(out), "--synthetic-questions", "ordinal")
    assert code in (0, None), err
    questions = {json.loads(line)["problem"].split("\n")[0] for line in open(out / "synthetic.jsonl")}
    assert questions == {
        "Which object appeared first?",
        "Where did the first object appear?",
        "Which object appeared last?",
        "Where is the last object heading?",
    }
    code, err = run_cli_here(
        capsys, *base, "--out", str(tmp_path / "bad"), "--synthetic-questions", "riddles"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "questions must be one of lookup, multihop, ordinal" in lines[0]


def test_a_folder_from_before_the_question_style_was_recorded_is_lookup(tmp_path):
    """A manifest written before `synthetic_questions` existed was made with lookup questions: continuing it
    with another style is refused (its question records would silently stay lookup), with lookup it goes on."""
    out = tmp_path / "old"
    base = dict(out=out, source="synthetic", synthetic_videos=2, synthetic_frames=64, synthetic_fps=2)
    run_pipeline(GenerateConfig(**base, stages=("synthetic",)), show_progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["stages"]["synthetic"]["settings"]["synthetic_questions"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="--synthetic-questions lookup \\(now ordinal\\)"):
        run_pipeline(
            GenerateConfig(**base, stages=("synthetic",), synthetic_questions="ordinal"), show_progress=False
        )
    run_pipeline(GenerateConfig(**base, stages=("synthetic",)), show_progress=False)  # lookup: continues
