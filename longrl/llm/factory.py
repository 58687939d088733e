"""`make_backend`: a chat backend by name, from the flags `longrl generate-data` (and judges) take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from longrl.llm.base import BackendConfigError, ChatBackend

BACKEND_KINDS = ("openai", "hf", "vllm")


def make_backend(
    kind: str,
    *,
    model: str,
    base_url: str | None = None,
    api_key_env: str | None = None,
    timeout_s: float = 60.0,
    retries: int = 4,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    device: str = "cpu",
    dtype: str = "float32",
    frame_fps: float = 1.0,
    vllm_options: Mapping[str, Any] | None = None,
) -> ChatBackend:
    """Build a chat backend.

    kind "openai": `model` is the served model name; base_url (e.g. http://localhost:8000/v1), api_key_env
    (name of the environment variable holding the key; None: no Authorization header), per-attempt timeout,
    retries and backoff apply. kind "hf": `model` is a local model folder, loaded on `device` in `dtype`;
    `frame_fps` is the rate the frames of one message are taken to be sampled at. kind "vllm": `model` is a
    folder or name for `vllm.LLM`, `vllm_options` its extra arguments (e.g. {"max_model_len": 32768}).
    Options that do not apply to `kind` are ignored.

    Raises BackendConfigError (unknown kind, bad URL, missing key variable, vLLM not installed) and, for
    "hf", ModelError / ConfigError from `longrl.models.load_model` for a bad folder, dtype or device.
    """
    if kind == "openai":
        from longrl.llm.openai import OpenAIChatBackend

        return OpenAIChatBackend(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
        )
    if kind == "hf":
        from longrl.llm.hf import HFChatBackend

        return HFChatBackend(model, device=device, dtype=dtype, frame_fps=frame_fps)
    if kind == "vllm":
        from longrl.llm.vllm import VLLMChatBackend

        return VLLMChatBackend(model, options=vllm_options)
    raise BackendConfigError(f"unknown chat backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
