"""The `openai` chat backend: any OpenAI-compatible chat-completions endpoint (a vLLM or SGLang server, a
hosted API), over the standard library's HTTP client.

Reliability: each attempt has a timeout (`timeout_s`, applied to connecting and to every read; a server
answers a non-streamed completion in one piece, so this bounds the attempt). 429, 408, 5xx, timeouts and
connection errors are retried up to `retries` times with exponential backoff and jitter
(`backoff_s * 2**attempt`, capped at `max_backoff_s`, times a random factor in [0.5, 1]); a `Retry-After`
header, when the server sends one, sets the wait instead (capped at `max_backoff_s`). Any other 4xx, and a
success status whose body is not a chat completion, fail at once: retrying would get the same answer.
Redirects (3xx) are refused, not followed, and fail at once naming the status and the Location's host:
following one would re-send the request, API key included, to whatever host the Location names.

Secrets: the API key is read from the environment variable named by `api_key_env` when the backend is
built, sent only as the `Authorization: Bearer` header, and never appears in logs, errors or repr (a server
that echoes it back has it masked).
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from longrl.llm.base import BackendConfigError, BackendRequestError, ChatMessage, check_messages

log = logging.getLogger(__name__)

RETRYABLE_CLIENT_STATUSES = (408, 429)  # request timeout, rate limit: the same request may succeed later
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_ERROR_CHARS = 300  # how much of a server's error message goes into an exception


class _Retryable(Exception):
    """One failed attempt that is worth repeating; `wait_s` is the server's Retry-After, if it sent one."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follows a redirect: urllib would re-send the request, with the Authorization header, to the
    Location's host. Returning None makes the 3xx surface as an HTTPError, handled in `_attempt`."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class _Secret:
    """A string that prints as *** (so dumping the backend's attributes never shows the key)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


class OpenAIChatBackend:
    """Chat completions over HTTP. Thread-safe: every call opens its own connection."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not model:
            raise BackendConfigError("the openai backend needs a model name (--model)")
        if not base_url:
            raise BackendConfigError(
                "the openai backend needs a base URL, e.g. http://localhost:8000/v1 for a vLLM server "
                "or https://api.openai.com/v1 (--base-url)"
            )
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise BackendConfigError(f"bad base URL {base_url!r}: expected http(s)://host[:port]/path")
        if parsed.username or parsed.password:
            raise BackendConfigError(
                "the base URL must not hold credentials; name the key with --api-key-env"
            )
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise BackendConfigError(
                f"need timeout_s > 0 and retries, backoff_s, max_backoff_s >= 0; got timeout_s={timeout_s}, "
                f"retries={retries}, backoff_s={backoff_s}, max_backoff_s={max_backoff_s}"
            )
        self._api_key: _Secret | None = None
        if api_key_env:
            key = os.environ.get(api_key_env, "").strip()
            if not key:
                raise BackendConfigError(
                    f"environment variable {api_key_env} (named by --api-key-env) is not set or empty; "
                    f"export {api_key_env}=<your key>"
                )
            self._api_key = _Secret(key)
        self.model = model
        self.name = f"openai:{model}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        # A server on this machine is never reached through an HTTP proxy from the environment.
        handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
        if parsed.hostname in _LOOPBACK_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self._rng = random.Random()
        self._closed = False

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAIChatBackend(model={self.model!r}, url={self.url!r}, api_key={key})"

    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """The reply text of choices[0]. Raises BackendRequestError once retries are spent (or at once for
        a request the server rejects); the message names the last status or reason."""
        if self._closed:
            raise BackendRequestError(f"{self.name}: the backend is closed")
        check_messages(messages)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
        }
        if seed is not None:
            body["seed"] = int(seed)
        data = json.dumps(body).encode("utf-8")
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(data)
            except _Retryable as failure:
                if attempt == attempts - 1:
                    raise BackendRequestError(
                        f"{self.name}: request to {self.url} failed after {attempts} attempt(s): {failure.reason}"
                    ) from None
                wait = self._wait_s(attempt, failure.wait_s)
                log.warning(
                    "%s: %s; retry %d/%d in %.2f s",
                    self.name,
                    failure.reason,
                    attempt + 1,
                    self.retries,
                    wait,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def close(self) -> None:
        self._closed = True

    def _wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_backoff_s)
        # Jitter spreads the retries of many worker threads that failed together (a shared rate limit).
        return min(self.backoff_s * 2**attempt, self.max_backoff_s) * self._rng.uniform(0.5, 1.0)

    def _attempt(self, data: bytes) -> str:
        """One request; the reply text, or _Retryable, or BackendRequestError for a final failure."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "longrl"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.value}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, _read_quietly(error)
            if 300 <= status < 400:
                raise BackendRequestError(
                    self._redirect_refused(status, error.headers.get("Location"))
                ) from None
            reason = f"HTTP {status}: {self._server_message(raw) or error.reason}"
            if status >= 500 or status in RETRYABLE_CLIENT_STATUSES:
                raise _Retryable(reason, _retry_after_s(error.headers.get("Retry-After"))) from None
            raise BackendRequestError(f"{self.name}: {self.url} rejected the request: {reason}") from None
        except urllib.error.URLError as error:  # connection refused, DNS, timeout while connecting
            raise _Retryable(_describe_os_error(error.reason, self.timeout_s)) from None
        except (OSError, http.client.HTTPException) as error:  # timeout while reading, connection dropped
            raise _Retryable(_describe_os_error(error, self.timeout_s)) from None
        return self._reply_text(status, raw)

    def _redirect_refused(self, status: int, location: str | None) -> str:
        """One line naming the redirect's status and the Location's host (only the host: a URL can hold
        credentials or tokens)."""
        try:
            host = (
                urllib.parse.urlsplit(urllib.parse.urljoin(self.url, location)).hostname if location else None
            )
        except ValueError:  # a malformed Location (e.g. a broken IPv6 literal)
            host = None
        target = f"host {self._mask(_one_line(host))!r}" if host else "an unreadable or missing Location"
        return (
            f"{self.name}: {self.url} answered HTTP {status}, a redirect to {target}; redirects are not "
            "followed (the request carries the API key): set --base-url to the final URL"
        )

    def _reply_text(self, status: int, raw: bytes) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            snippet = self._mask(_one_line(raw.decode("utf-8", "replace"))[:_ERROR_CHARS])
            raise BackendRequestError(
                f"{self.name}: HTTP {status} from {self.url} is not a chat completion with text "
                f"(choices[0].message.content): {snippet!r}"
            )
        return content

    def _server_message(self, raw: bytes) -> str:
        """The server's error message, on one line, truncated, with the API key masked."""
        text = raw.decode("utf-8", "replace")
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            error = payload.get("error", payload)
            if isinstance(error, dict):
                text = str(error.get("message") or error.get("detail") or error)
            elif error:
                text = str(error)
        return self._mask(_one_line(text)[:_ERROR_CHARS])

    def _mask(self, text: str) -> str:
        return text.replace(self._api_key.value, "***") if self._api_key else text


def _read_quietly(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - time.time()


def _describe_os_error(error: object, timeout_s: float) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"no answer within the {timeout_s:g} s timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running at this URL?)"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    return _one_line(f"{type(error).__name__}: {error}")
