"""The `openai` chat backend against a real HTTP server on 127.0.0.1 (tests/chat_server.py) with scripted
answers: request format, images, the API key's handling, retries/backoff/timeouts, failures, concurrency.

References: the request JSON the OpenAI chat-completions API defines; timings are checked only from below
(a wait at least as long as the backoff rule says; never an upper bound tighter than seconds, since the
machine is shared), except where a cap must hold (Retry-After 100 s capped at 0.2 s).
"""

from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from chat_server import ChatServer, Drop, Raw, Redirect, Reply, Sleep, Status
from PIL import Image

from longrl.errors import ConfigError, LongRLError
from longrl.llm import (
    BackendConfigError,
    BackendRequestError,
    ChatBackend,
    make_backend,
    message_text,
    system_message,
    user_message,
)
from longrl.llm.openai import _retry_after_s

KEY_ENV = "LONGRL_TEST_CHAT_KEY"
SECRET = "sk-test-5ecret-do-not-leak-0123456789"
HELLO = [system_message("You are terse."), user_message("Say hi.")]


def backend_for(server: ChatServer, **overrides):
    """A backend with short timeouts and backoffs for tests."""
    options = {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05, **overrides}
    return make_backend("openai", model="test-model", base_url=server.url, **options)


def test_good_response_and_request_format():
    with ChatServer([Reply('{"question": "Why?", "answer": "B"}')]) as server:
        backend = backend_for(server)
        assert isinstance(backend, ChatBackend) and backend.name == "openai:test-model"
        reply = backend.chat(HELLO, max_tokens=32, temperature=0.7, seed=11)
    assert reply == '{"question": "Why?", "answer": "B"}'
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers  # no key variable named: no header
    assert request.json == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hi."},
        ],
        "max_tokens": 32,
        "temperature": 0.7,
        "seed": 11,
    }


def test_seed_left_out_when_none_and_base_url_slash():
    with ChatServer(["ok"]) as server:
        backend = make_backend("openai", model="m", base_url=server.url + "/", timeout_s=2)
        assert backend.chat(HELLO, max_tokens=4) == "ok"
    body = server.requests[0].json
    assert "seed" not in body and body["temperature"] == 0.0
    assert server.requests[0].path == "/v1/chat/completions"


def _gradient_frame(height: int, width: int, shift: int) -> np.ndarray:
    """A smooth uint8 (H, W, 3) image (JPEG keeps smooth images within a few levels)."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x * 4 + shift) % 256, (y * 4) % 256, ((x + y) * 2 + shift) % 256], axis=-1)
    return frame.astype(np.uint8)


def test_images_are_sent_as_base64_jpeg_data_urls():
    frames = [_gradient_frame(48, 64, shift) for shift in (0, 40, 80)]
    message = user_message("Caption these frames.", frames)
    assert message_text(message) == "Caption these frames."
    with ChatServer(["a caption"]) as server:
        assert backend_for(server).chat([message], max_tokens=16) == "a caption"
    (request,) = server.requests
    parts = request.json["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]  # frames first, in order, then text
    assert parts[-1]["text"] == "Caption these frames."
    for url, frame in zip(request.image_urls, frames, strict=True):
        prefix = "data:image/jpeg;base64,"
        assert url.startswith(prefix)
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).convert("RGB"))
        assert decoded.shape == frame.shape
        # JPEG at quality 90 of a smooth image: mean error within 3 levels (of 255).
        assert np.abs(decoded.astype(int) - frame.astype(int)).mean() < 3.0


def test_api_key_sent_as_header_and_never_shown(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    script = [
        "fine",
        Status(500, "overloaded"),
        Status(500, "overloaded"),
        Status(500, "overloaded"),
        Status(401, f"Incorrect API key provided: {SECRET}"),  # a server that echoes the key back
    ]
    with ChatServer(script) as server, caplog.at_level(logging.DEBUG):
        backend = backend_for(server, api_key_env=KEY_ENV)
        assert backend.chat(HELLO, max_tokens=4) == "fine"
        with pytest.raises(BackendRequestError) as failed:
            backend.chat(HELLO, max_tokens=4)
        with pytest.raises(BackendRequestError) as rejected:
            backend.chat(HELLO, max_tokens=4)
    assert [r.headers["authorization"] for r in server.requests] == [f"Bearer {SECRET}"] * 5
    assert "HTTP 500" in str(failed.value) and "HTTP 401" in str(rejected.value)
    assert "Incorrect API key provided: ***" in str(rejected.value)
    shown = [str(failed.value), str(rejected.value), repr(backend), str(vars(backend)), caplog.text]
    assert caplog.records, "retries are logged"
    for text in shown:
        assert SECRET not in text
    assert "\n" not in str(failed.value) and "\n" not in str(rejected.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_refused_and_the_key_never_reaches_the_other_host(monkeypatch, status):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ChatServer(["stolen"]) as elsewhere:
        target = elsewhere.url.replace("127.0.0.1", "localhost") + "/chat/completions"
        with ChatServer([Redirect(target, status=status), "not reached"]) as server:
            with pytest.raises(BackendRequestError) as refused:
                backend_for(server, api_key_env=KEY_ENV, retries=3).chat(HELLO, max_tokens=4)
    assert elsewhere.requests == []  # the key (and the request) never left for the Location's host
    assert len(server.requests) == 1  # refused at once, not retried
    message = str(refused.value)
    assert f"HTTP {status}" in message and "redirect" in message and "localhost" in message
    assert "\n" not in message and SECRET not in message


def test_missing_or_empty_api_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendConfigError, match=f"environment variable {KEY_ENV}"):
        make_backend("openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, "  ")
    with pytest.raises(BackendConfigError, match="not set or empty"):
        make_backend("openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    assert issubclass(BackendConfigError, ConfigError)


@pytest.mark.parametrize(
    "base_url, match",
    [
        (None, "needs a base URL"),
        ("", "needs a base URL"),
        ("localhost:8000/v1", "bad base URL"),
        ("ftp://host/v1", "bad base URL"),
        ("http:///v1", "bad base URL"),
        ("https://user:pw@host/v1", "must not hold credentials"),
    ],
)
def test_bad_base_url_is_a_config_error(base_url, match):
    with pytest.raises(BackendConfigError, match=match):
        make_backend("openai", model="m", base_url=base_url)


def test_unknown_backend_kind():
    with pytest.raises(
        BackendConfigError, match="unknown chat backend 'gpt'; choose one of openai, hf, vllm"
    ):
        make_backend("gpt", model="m")


def test_429_then_success_waits_retry_after():
    with ChatServer([Status(429, "slow down", retry_after=0.3), "ok"]) as server:
        backend = backend_for(server, max_backoff_s=5.0)
        assert backend.chat(HELLO, max_tokens=4) == "ok"
    assert len(server.requests) == 2
    (gap,) = server.gaps_s()
    assert gap >= 0.3  # Retry-After honored (the own backoff alone would be <= 0.01 s)


def test_retry_after_is_capped_by_max_backoff():
    with ChatServer([Status(429, retry_after=100), Status(503, retry_after=100), "ok"]) as server:
        start = time.monotonic()
        assert backend_for(server, max_backoff_s=0.2).chat(HELLO, max_tokens=4) == "ok"
        elapsed = time.monotonic() - start
    assert all(gap >= 0.2 for gap in server.gaps_s())
    assert elapsed < 10  # two capped waits of 0.2 s, not 200 s


def test_retry_after_header_forms():
    assert _retry_after_s("2.5") == 2.5
    assert _retry_after_s(None) is None and _retry_after_s("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < _retry_after_s(future) <= 31


def test_server_errors_exhaust_retries_with_exponential_backoff():
    with ChatServer([Status(500, "boom")] * 4 + ["never reached"]) as server:
        backend = backend_for(server, retries=3, backoff_s=0.05, max_backoff_s=1.0)
        with pytest.raises(BackendRequestError) as error:
            backend.chat(HELLO, max_tokens=4)
    assert len(server.requests) == 4  # 1 + 3 retries
    message = str(error.value)
    assert "failed after 4 attempt(s)" in message and "HTTP 500: boom" in message
    # Wait before retry i is backoff_s * 2**i times a jitter factor in [0.5, 1].
    for i, gap in enumerate(server.gaps_s()):
        assert gap >= 0.05 * 2**i * 0.5, (i, gap)


def test_client_error_fails_at_once_with_server_message():
    long_message = "model 'x' does not exist " + "detail " * 200
    with ChatServer([Status(400, long_message), "not reached"]) as server:
        with pytest.raises(BackendRequestError) as error:
            backend_for(server, retries=4).chat(HELLO, max_tokens=4)
    assert len(server.requests) == 1
    message = str(error.value)
    assert "rejected the request: HTTP 400: model 'x' does not exist" in message
    assert len(message) < 500  # the server's message is truncated


def test_slower_than_timeout_is_retried_then_fails():
    with ChatServer([Sleep(5.0)] * 2) as server:
        backend = backend_for(server, timeout_s=0.3, retries=1)
        start = time.monotonic()
        with pytest.raises(BackendRequestError, match="no answer within the 0.3 s timeout"):
            backend.chat(HELLO, max_tokens=4)
        elapsed = time.monotonic() - start
    assert len(server.requests) == 2
    assert elapsed < 4.0  # each attempt gave up after ~0.3 s instead of waiting 5 s


def test_timeout_then_success():
    with ChatServer([Sleep(5.0), "in time"]) as server:
        assert backend_for(server, timeout_s=0.3).chat(HELLO, max_tokens=4) == "in time"
    assert len(server.requests) == 2


def test_dropped_connection_is_retried():
    with ChatServer([Drop(), "after drop"]) as server:
        assert backend_for(server).chat(HELLO, max_tokens=4) == "after drop"
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_fails():
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = make_backend(
        "openai", model="m", base_url=f"http://127.0.0.1:{port}/v1", retries=2, backoff_s=0.01, timeout_s=2
    )
    with pytest.raises(BackendRequestError, match="failed after 3 attempt.*connection refused"):
        backend.chat(HELLO, max_tokens=4)


def test_malformed_body_fails_at_once_unless_5xx():
    with ChatServer([Raw("<html>not json</html>"), "unused"]) as server:
        with pytest.raises(BackendRequestError, match="is not a chat completion.*not json"):
            backend_for(server).chat(HELLO, max_tokens=4)
        assert len(server.requests) == 1
    with ChatServer([Raw('{"choices": []}'), Raw('{"choices": [{"message": {"content": null}}]}')]) as server:
        for _ in range(2):
            with pytest.raises(BackendRequestError, match="choices\\[0\\].message.content"):
                backend_for(server).chat(HELLO, max_tokens=4)
    with ChatServer([Raw("<html>bad gateway</html>", status=502), "recovered"]) as server:
        assert backend_for(server).chat(HELLO, max_tokens=4) == "recovered"


def test_model_output_that_is_malformed_json_comes_back_verbatim():
    text = '{"question": "What happens", "options": ["a", "b"'  # the model's problem, judged by the caller
    with ChatServer([Reply(text, finish_reason="length")]) as server:
        assert backend_for(server).chat(HELLO, max_tokens=4) == text


def test_concurrent_requests_each_get_their_own_answer():
    rng_lock = threading.Lock()
    rng = np.random.default_rng(0)

    def answer(request):
        with rng_lock:
            pause = float(rng.uniform(0, 0.02))
        time.sleep(pause)  # replies finish out of order
        if request.index % 7 == 3:
            return Status(503, "busy")  # some requests need a retry too
        return Reply("echo:" + request.messages[-1]["content"])

    questions = [f"question {i}" for i in range(48)]
    with ChatServer(answer) as server:
        backend = backend_for(server, retries=4)
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(lambda q: backend.chat([user_message(q)], max_tokens=8), questions))
    assert replies == [f"echo:{q}" for q in questions]
    assert not server.script_errors
    assert len(server.requests) > len(questions)  # the 503s were retried


def test_exhausted_script_and_broken_messages_fail_loudly():
    with ChatServer([]) as server:
        with pytest.raises(BackendRequestError, match="no scripted response left for request 0"):
            backend_for(server).chat(HELLO, max_tokens=4)
        backend = backend_for(server)
        with pytest.raises(BackendRequestError, match="no messages"):
            backend.chat([], max_tokens=4)
        with pytest.raises(BackendRequestError, match="needs a role"):
            backend.chat([{"role": "robot", "content": "hi"}], max_tokens=4)
        with pytest.raises(BackendRequestError, match="a part must be"):
            backend.chat([{"role": "user", "content": [{"type": "audio"}]}], max_tokens=4)
        assert len(server.requests) == 1  # broken messages never reach the server
        backend.close()
        with pytest.raises(BackendRequestError, match="closed"):
            backend.chat(HELLO, max_tokens=4)
    assert issubclass(BackendRequestError, LongRLError)
