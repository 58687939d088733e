"""A real HTTP server speaking OpenAI chat completions, with scripted answers, for tests.

    from chat_server import ChatServer, Drop, Raw, Reply, Sleep, Status

    with ChatServer([Status(429, retry_after=0.1), Reply('{"question": "..."}')]) as server:
        backend = make_backend("openai", model="m", base_url=server.url, retries=2, backoff_s=0.01)
        assert backend.chat([user_message("hi")], max_tokens=8) == '{"question": "..."}'
    assert len(server.requests) == 2 and server.requests[0].json["model"] == "m"

The script says what each request gets, in arrival order: a list of actions (a plain str is short for
`Reply(str)`), or a function `request -> action` (it is called from the server's threads; it may look at
`request.json`, `request.text`, `request.image_urls` to answer by content). Actions:

- `Reply(text)`: 200 with a well-formed chat completion whose choices[0].message.content is `text`
  (good JSON, malformed JSON, anything: the text is the model's output, not the HTTP body).
- `Raw(body, status=200)`: that exact HTTP body (e.g. a malformed response that is not a chat completion).
- `Status(code, message, retry_after=None)`: an error status with an OpenAI-style error body
  ({"error": {"message": ...}}) and an optional Retry-After header (seconds).
- `Sleep(seconds, then=Reply("late"))`: wait (longer than the client's timeout, say), then answer `then`.
- `Drop()`: close the connection without answering.
- `Redirect(location, status=302)`: a redirect status (301/302/303/307/308) with that `Location` header.

A list that runs out answers `Status(400, "chat_server: no scripted response left for request N")`, so a
client that sends too many requests fails loudly instead of hanging. Every request is recorded, in arrival
order, in `server.requests` (method, path, headers with lower-case names, body bytes, parsed JSON, arrival
time); `server.gaps_s()` gives the waits between consecutive requests (a client's backoff).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """200 with a chat completion whose message content is `text`."""

    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Raw:
    """An HTTP response with exactly this body."""

    body: str | bytes
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True)
class Status:
    """An error status with an OpenAI-style error body and an optional Retry-After (seconds)."""

    code: int
    message: str = "scripted error"
    retry_after: float | None = None


@dataclass(frozen=True)
class Sleep:
    """Wait `seconds` before answering `then` (the wait ends early when the server shuts down)."""

    seconds: float
    then: Action = field(default_factory=lambda: Reply("late"))


@dataclass(frozen=True)
class Drop:
    """Close the connection without sending anything."""


@dataclass(frozen=True)
class Redirect:
    """A redirect: `status` (301, 302, 303, 307 or 308) with a `Location: location` header."""

    location: str
    status: int = 302


Action = Reply | Raw | Status | Sleep | Drop | Redirect | str


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    index: int  # arrival order, from 0
    arrived_s: float = 0.0  # time.monotonic() when the request was read (to check backoff waits)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages of the request ([] when there are none)."""
        body = self.json
        return body.get("messages", []) if isinstance(body, dict) else []

    @property
    def text(self) -> str:
        """All text of all messages, joined by newlines (to answer by content or assert on prompts)."""
        texts = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            else:
                texts.extend(part["text"] for part in content or () if part.get("type") == "text")
        return "\n".join(texts)

    @property
    def image_urls(self) -> list[str]:
        """The image URLs of all messages, in order."""
        urls = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, list):
                urls.extend(part["image_url"]["url"] for part in content if part.get("type") == "image_url")
        return urls


Script = Iterable[Action] | Callable[[RecordedRequest], Action]


def completion_body(text: str, *, model: str = "scripted", finish_reason: str = "stop") -> dict[str, Any]:
    """A chat-completions response body whose first choice says `text`."""
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class ChatServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering per its script; a context manager.

    url: the base URL to give a client ("http://127.0.0.1:PORT/v1"); requests go to {url}/chat/completions.
    """

    def __init__(self, script: Script = ()) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[RecordedRequest] = []
        self.script_errors: list[Exception] = []  # exceptions a script function raised
        if callable(script):
            self._respond: Callable[[RecordedRequest], Action] | None = script
            self._queue: deque[Action] = deque()
        else:
            self._respond = None
            self._queue = deque(script)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a handler still sleeping never blocks shutdown
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="chat-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *actions: Action) -> None:
        """Append actions to a list script."""
        with self._lock:
            self._queue.extend(actions)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def gaps_s(self) -> list[float]:
        """Seconds between consecutive requests' arrivals."""
        with self._lock:
            times = [request.arrived_s for request in self.requests]
        return [later - earlier for earlier, later in zip(times[:-1], times[1:], strict=True)]

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Called by the handler threads.
    def _record_and_pick(self, request: RecordedRequest) -> Action:
        with self._lock:
            request.index = len(self.requests)
            self.requests.append(request)
            if self._respond is None:
                if self._queue:
                    return self._queue.popleft()
                return Status(400, f"chat_server: no scripted response left for request {request.index}")
        try:
            return self._respond(request)
        except Exception as error:  # a broken script answers loudly (400: never retried), and is kept
            with self._lock:
                self.script_errors.append(error)
            return Status(400, f"chat_server: the script raised {error!r}")


def _make_handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = RecordedRequest(self.command, self.path, headers, body, -1, time.monotonic())
            action = server._record_and_pick(request)
            try:
                self._perform(action)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                self.close_connection = True

        def _perform(self, action: Action) -> None:
            if isinstance(action, str):
                action = Reply(action)
            if isinstance(action, Sleep):
                if server._stop.wait(action.seconds):
                    self.close_connection = True
                    return
                self._perform(action.then)
            elif isinstance(action, Drop):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif isinstance(action, Reply):
                self._send(200, completion_body(action.text, finish_reason=action.finish_reason))
            elif isinstance(action, Status):
                extra = {} if action.retry_after is None else {"Retry-After": f"{action.retry_after:g}"}
                error = {"error": {"message": action.message, "type": "scripted", "code": action.code}}
                self._send(action.code, error, extra)
            elif isinstance(action, Raw):
                body = action.body.encode() if isinstance(action.body, str) else action.body
                self._send_bytes(action.status, body, action.content_type, {})
            elif isinstance(action, Redirect):
                self._send_bytes(action.status, b"", "text/plain", {"Location": action.location})
            else:
                raise TypeError(f"chat_server: unknown action {action!r}")

        def _send(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
            self._send_bytes(status, json.dumps(payload).encode(), "application/json", extra or {})

        def _send_bytes(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

    return Handler
