"""Chat backends for data generation and LLM judges: one interface over an OpenAI-compatible HTTP endpoint
(`openai`), a local model folder (`hf`) and an offline vLLM engine (`vllm`).

    from longrl.llm import make_backend, system_message, user_message
    backend = make_backend("openai", model="qwen", base_url="http://localhost:8000/v1", api_key_env="KEY")
    reply = backend.chat([system_message("..."), user_message("Describe the clip.", frames)], max_tokens=256)

See `longrl.llm.base` for the message format, the `ChatBackend` protocol and the errors. The backends'
own modules (transformers, HTTP) load only when `make_backend` builds one.
"""

from longrl.llm.base import (
    BackendConfigError,
    BackendRequestError,
    ChatBackend,
    ChatMessage,
    assistant_message,
    check_messages,
    image_part,
    message_image_urls,
    message_text,
    system_message,
    text_part,
    user_message,
)
from longrl.llm.factory import BACKEND_KINDS, make_backend

__all__ = [
    "BACKEND_KINDS",
    "BackendConfigError",
    "BackendRequestError",
    "ChatBackend",
    "ChatMessage",
    "assistant_message",
    "check_messages",
    "image_part",
    "make_backend",
    "message_image_urls",
    "message_text",
    "system_message",
    "text_part",
    "user_message",
]
