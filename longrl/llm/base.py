"""The chat backend interface: what the generate-data stages (captioner, reasoner) and LLM judges call.

    backend = make_backend("openai", model="Qwen2.5-VL-72B", base_url="http://host:8000/v1",
                           api_key_env="MY_API_KEY")
    text = backend.chat([system_message("You caption videos."), user_message("Describe the clip.", frames)],
                        max_tokens=256, temperature=0.0, seed=0)
    backend.close()

Messages use the OpenAI chat format, so one list works with every backend: a message is a dict
{"role": "system" | "user" | "assistant", "content": str | list of parts}, and a part is
{"type": "text", "text": str} or {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}.
`user_message(text, frames)` builds such a message from video frames (uint8 numpy arrays, (H, W, 3) RGB).

Errors: a request that still fails after all retries raises `BackendRequestError` (one line: what was
asked, the status or reason); a bad setup (missing API key variable, bad URL, unknown backend, model that
cannot be loaded) raises `BackendConfigError`. Neither ever contains an API key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from longrl.errors import ConfigError, LongRLError

# One chat message in the OpenAI format: {"role": ..., "content": str | list[part]} (see the module docstring).
ChatMessage = dict[str, Any]

ROLES = ("system", "user", "assistant")


class BackendRequestError(LongRLError):
    """A chat request that failed for good (after all retries, or at once for a request the server rejects)."""


class BackendConfigError(ConfigError):
    """A chat backend that cannot be set up as asked: unknown kind, missing API key variable, bad URL, ..."""


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model behind one call. Implementations are thread-safe: the data pipeline calls `chat` from a
    pool of worker threads at once."""

    name: str  # "<kind>:<model>", for logs and manifests (never holds secrets)

    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """The assistant's reply text to `messages`. temperature 0 is greedy; `seed` makes sampling
        reproducible where the backend supports it. Raises BackendRequestError when the request fails."""
        ...

    def close(self) -> None:
        """Release connections / model memory. The backend is unusable afterwards."""
        ...


def text_part(text: str) -> dict[str, Any]:
    """A text content part."""
    return {"type": "text", "text": text}


def image_part(frame: np.ndarray, *, quality: int = 90) -> dict[str, Any]:
    """An image content part holding `frame` (uint8 (H, W, 3) RGB) as a base64 JPEG data URL."""
    from longrl.llm.images import frame_to_data_url

    return {"type": "image_url", "image_url": {"url": frame_to_data_url(frame, quality=quality)}}


def system_message(text: str) -> ChatMessage:
    """A system message."""
    return {"role": "system", "content": text}


def assistant_message(text: str) -> ChatMessage:
    """An assistant message (an earlier reply, e.g. before a repair prompt)."""
    return {"role": "assistant", "content": text}


def user_message(text: str, images: Iterable[np.ndarray] = (), *, quality: int = 90) -> ChatMessage:
    """A user message: `text` alone (content is a str), or the images first, in order, then the text.

    images: frames as uint8 numpy arrays of shape (H, W, 3), RGB (e.g. from `longrl.video.load_video`),
    each sent as a JPEG of the given quality. Backends that understand video (the hf backend on a VLM)
    treat several images in one message as the frames of a short video, in the order given.
    """
    parts = [image_part(frame, quality=quality) for frame in images]
    if not parts:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*parts, text_part(text)]}


def message_text(message: ChatMessage) -> str:
    """The text of a message: its str content, or its text parts joined by newlines (images left out)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content or () if part.get("type") == "text")


def message_image_urls(message: ChatMessage) -> list[str]:
    """The image URLs of a message, in order (empty when its content is a str)."""
    content = message.get("content")
    if isinstance(content, str) or content is None:
        return []
    return [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]


def check_messages(messages: Sequence[ChatMessage]) -> None:
    """Raise BackendRequestError (one line) when `messages` is not a non-empty list of well-formed chat
    messages; a programming mistake in the caller, caught before anything is sent."""
    if not messages:
        raise BackendRequestError("chat request has no messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BackendRequestError(f"chat message {i} needs a role in {ROLES}, got {message!r:.80}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise BackendRequestError(f"chat message {i}: content must be a str or a list of parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image_url" and isinstance(part.get("image_url", {}).get("url"), str):
                continue
            raise BackendRequestError(
                f"chat message {i}: a part must be {{'type': 'text', 'text': str}} or "
                f"{{'type': 'image_url', 'image_url': {{'url': str}}}}, got {part!r:.80}"
            )
