"""The LLM judge for open-ended answers, against the scripted OpenAI-compatible HTTP server of
tests/chat_server.py (a real server on 127.0.0.1): the verdict parser on hand-written replies, the requests
it sends, and `longrl eval --judge-backend openai` end to end with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_server import ChatServer, Status
from helpers import run_cli
from videos import write_video

from longrl.eval.judge import JUDGE_SYSTEM, JudgeConfig, LLMJudge, make_judge, parse_verdict
from longrl.llm import BackendConfigError, BackendRequestError, make_backend
from longrl.models import make_tiny


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Yes", True),
        ("yes.", True),
        ("  **YES**, they match", True),
        ("No", False),
        ("no - the colour differs", False),
        ("Correct", True),
        ("Incorrect.", False),
        ("True", True),
        ('{"pred": "yes", "score": 4}', True),
        ("Here it is: {'pred': 'no'}", False),  # not JSON: the first verdict word decides
        ('```json\n{"pred": "no", "score": 1}\n```', False),
        ('{"correct": true}', True),
        ("<think>At first I'd say no, but red is red.</think>Yes", True),
        ("I cannot tell.", False),
        ("", False),
    ],
)
def test_parse_verdict(reply: str, verdict: bool):
    assert parse_verdict(reply) is verdict


def _by_content(request):
    # Says yes exactly when the predicted answer equals the correct one, ignoring case.
    text = request.text
    gold = text.split("Correct answer: ")[1].split("\n")[0]
    predicted = text.split("Predicted answer: ")[1].split("\n")[0]
    return "Yes." if gold.lower() == predicted.lower() else "No, it differs."


def test_judge_requests_and_verdicts():
    with ChatServer(_by_content) as server:
        judge = make_judge(JudgeConfig("openai", "judge-m", base_url=server.url, workers=3))
        verdicts = judge.judge_many(
            [("What colour?", "red", "Red"), ("What colour?", "red", "blue"), ("How many?", "2", None),
             ("Who?", "a man", "A MAN"), ("Where?", "park", "  ")]
        )  # fmt: skip
        judge.close()
    assert [v.correct for v in verdicts] == [True, False, False, True, False]
    assert [v.reply for v in verdicts] == ["Yes.", "No, it differs.", "", "Yes.", ""]
    assert len(server.requests) == 3  # empty answers are wrong without asking
    body = server.requests[0].json
    assert body["model"] == "judge-m" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM}
    assert not server.script_errors


def test_failed_request_raises_after_retries():
    with ChatServer([Status(500), Status(500)]) as server:
        backend = make_backend("openai", model="m", base_url=server.url, retries=1, backoff_s=0.0)
        with pytest.raises(BackendRequestError, match="HTTP 500"):
            LLMJudge(backend).judge("q", "a", "b")


def test_missing_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("LONGRL_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(BackendConfigError, match="LONGRL_TEST_JUDGE_KEY"):
        make_judge(
            JudgeConfig("openai", "m", base_url="http://127.0.0.1:9/v1", api_key_env="LONGRL_TEST_JUDGE_KEY")
        )


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_judge")
    make_tiny(root / "tiny")
    (root / "videos").mkdir()
    write_video(root / "videos" / "v_a.mp4", 16, 8)
    rows = [
        {"video_name": "v_a", "question_id": f"v_a_{i}", "question": f"what is shown {i}", "answer": "red",
         "type": [3, 4][i % 2]}
        for i in range(3)
    ]  # fmt: skip
    (root / "anet.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_eval_with_openai_judge_end_to_end(bench: Path, monkeypatch):
    monkeypatch.setenv("LONGRL_TEST_JUDGE_KEY", "sk-test-123")

    def script(request):  # the judge says yes for questions 0 and 2, whatever the tiny model answered
        return "Yes" if "shown 1" not in request.text else "No"

    with ChatServer(script) as server:
        run = run_cli(
            "eval", "--model", str(bench / "tiny"), "--benchmark", "open-ended", "--data", str(bench / "anet.jsonl"),
            "--video-root", str(bench / "videos"), "--out", str(bench / "out"), "--frames", "4",
            "--max-new-tokens", "6", "--no-require-answer-tag", "--judge-backend", "openai",
            "--judge-model", "judge-m", "--judge-base-url", server.url, "--judge-api-key-env", "LONGRL_TEST_JUDGE_KEY",
            cwd=bench,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    records = [
        json.loads(line)
        for line in (bench / "out" / "frames_4" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["correct"] for r in records] == [[True], [False], [True]]
    assert all(r["exact"] == [False] for r in records)  # the tiny model's babble never matches "red"
    assert [r["judge"] for r in records] == [["Yes"], ["No"], ["Yes"]]
    assert len(server.requests) == 3
    assert all(req.headers["authorization"] == "Bearer sk-test-123" for req in server.requests)
    # Requests run concurrently (any order): match them to the records by their question line.
    asked = {req.text.split("Question: ")[1].split("\n")[0]: req.text for req in server.requests}
    for i, record in enumerate(records):
        text = asked[f"what is shown {i}"]
        assert (
            f"Predicted answer: {record['parsed'][0].strip()}\n" in text and "Correct answer: red\n" in text
        )
    metrics = json.loads((bench / "out" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_category"]["yes/no"]["accuracy"] == pytest.approx(1.0)
    assert "sk-test-123" not in (bench / "out" / "eval_config.json").read_text()


def test_judge_key_missing_exits_2_before_loading(bench: Path, monkeypatch):
    monkeypatch.delenv("LONGRL_TEST_JUDGE_KEY", raising=False)
    run = run_cli(
        "eval", "--model", str(bench / "tiny"), "--benchmark", "open-ended", "--data", str(bench / "anet.jsonl"),
        "--video-root", str(bench / "videos"), "--out", str(bench / "nokey"), "--judge-backend", "openai",
        "--judge-model", "m", "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-api-key-env",
        "LONGRL_TEST_JUDGE_KEY", cwd=bench,
    )  # fmt: skip
    assert run.returncode == 2 and "LONGRL_TEST_JUDGE_KEY" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (bench / "nokey").exists()
