"""Kill `longrl generate-data` (SIGKILL) in the middle of the caption stage, run the same command again, and
check that nothing is lost or duplicated and that finished records are not requested again. Also: the CLI's
one-line errors (exit code 2) for user mistakes.

Reference: the chat server records every request; the captions written before the kill are read from the
file after the process is dead, so every request after that point belongs to the second run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from chat_server import ChatServer, Reply, Sleep
from helpers import run_cli
from videos import write_video

from longrl.data import load_examples

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from longrl.cli.app import main; sys.argv[0] = 'longrl'; main()"
NUM_CLIPS = 10
CATEGORIES = ("temporal", "goal")


def question_reply(category: str) -> str:
    return json.dumps(
        {
            "question": f"What does the {category} question ask about the moving circle?",
            "options": ["it moves left", "it moves right", "it stays still", "it disappears"],
            "answer": "B",
            "reasoning": "At 00:03 the circle is on the left and at 00:12 it is on the right, so B.",
            "category": category,
        }
    )


def script(request):
    text = request.text
    if "describe short video clips" in text:
        start = re.search(r"the clip (\d\d:\d\d)-", text).group(1)
        return Sleep(0.4, then=Reply(f"The circle moves right after {start}."))
    if "rewrite the reasoning" in text.lower():
        return Reply(json.dumps({"reasoning": "At 00:03 left, at 00:12 right: B."}))
    category = re.search(r'with "category": "(\w+)"', text).group(1)
    return Reply(question_reply(category))


def caption_start(request) -> str | None:
    m = re.search(r"the clip (\d\d:\d\d)-", request.text)
    return m.group(1) if m and "describe short video clips" in request.text else None


def command(videos: Path, out: Path, url: str) -> list[str]:
    return [
        "generate-data", "--videos", str(videos), "--out", str(out),
        "--captioner", "openai", "--captioner-model", "cap", "--reasoner", "openai", "--reasoner-model", "rea",
        "--base-url", url, "--clip-seconds", "3", "--caption-frames", "2", "--concurrency", "2",
        "--categories", ",".join(CATEGORIES), "--per-video", "2", "--timeout", "10", "--retries", "1",
        "--backoff", "0.01", "--eval-fraction", "0", "--quiet",
    ]  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_kill_during_captions_then_resume(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "long.mp4", num_frames=60, fps=2)  # 30 s -> 10 clips of 3 s
    out = tmp_path / "out"
    captions_file = out / "captions.jsonl"
    with ChatServer(script) as server:
        args = command(videos, out, server.url)
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if captions_file.exists() and len(captions_file.read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.5)  # let the server record any request the killed process had already sent
        requests_before = server.request_count
        done_before = {r["id"] for r in lines(captions_file)}
        assert 3 <= len(done_before) < NUM_CLIPS
        assert not (out / "questions.jsonl").exists()  # killed inside the caption stage
        # A write cut short by a kill leaves a torn last line; the next run must drop it.
        with captions_file.open("a") as f:
            f.write('{"id": "long-torn/c0099", "capt')

        second = run_cli(*args, cwd=REPO, timeout=120)
        assert second.returncode == 0, second.stderr
        later = server.requests[requests_before:]

    captions = lines(captions_file)
    ids = [c["id"] for c in captions]
    clip_ids = [c["id"] for c in lines(out / "clips.jsonl")]
    assert len(clip_ids) == NUM_CLIPS and len(set(ids)) == len(ids) and sorted(ids) == sorted(clip_ids)
    # The second run asked for exactly the clips the first one had not finished, each once.
    start_of = {
        c["id"]: time.strftime("%M:%S", time.gmtime(c["start_s"])) for c in lines(out / "clips.jsonl")
    }
    asked_again = [caption_start(r) for r in later if caption_start(r) is not None]
    assert sorted(asked_again) == sorted(start_of[i] for i in clip_ids if i not in done_before)
    # Every later stage ran completely once.
    questions = lines(out / "questions.jsonl")
    assert sorted(q["category"] for q in questions) == sorted(CATEGORIES)
    assert len(lines(out / "refined.jsonl")) == len(CATEGORIES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["caption"]["records"] == NUM_CLIPS and manifest["stages"]["caption"]["complete"]
    assert manifest["splits"]["sft"]["rows"] == len(CATEGORIES)
    examples, _ = load_examples(out / "sft.jsonl", videos, on_bad_row="fail")
    assert sorted(ex.category for ex in examples) == sorted(CATEGORIES)
    assert not list(out.glob(".*.tmp*"))  # no temporary file left behind

    # A third run has nothing left to ask.
    with ChatServer(script) as server:
        third = run_cli(*command(videos, out, server.url), cwd=REPO, timeout=120)
        assert third.returncode == 0, third.stderr
        assert server.request_count == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(entry["complete"] for entry in manifest["stages"].values())  # nothing new: all stay finished


def test_cli_user_mistakes_exit_2_with_one_line(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "v.mp4", num_frames=8, fps=2)
    out = tmp_path / "out"

    missing = run_cli("generate-data", "--videos", str(videos), "--out", str(out), cwd=REPO)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: the caption stage needs --captioner (one of openai, hf, vllm)"
    ]
    bad_stage = run_cli("generate-data", "--videos", str(videos), "--out", str(out), "--stages", "scan,oops",
                        cwd=REPO)  # fmt: skip
    assert bad_stage.returncode == 2 and "--stages: oops" in bad_stage.stderr
    assert len(bad_stage.stderr.strip().splitlines()) == 1

    # Settings that records depend on must not change under an existing output folder.
    first = run_cli("generate-data", "--videos", str(videos), "--out", str(out), "--stages", "scan,segment",
                    "--quiet", cwd=REPO)  # fmt: skip
    assert first.returncode == 0, first.stderr
    changed = run_cli("generate-data", "--videos", str(videos), "--out", str(out), "--stages", "segment",
                      "--clip-seconds", "5", cwd=REPO)  # fmt: skip
    assert changed.returncode == 2
    assert "was made with --clip-seconds 10.0 (now 5.0)" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
