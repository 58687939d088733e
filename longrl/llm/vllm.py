"""The `vllm` chat backend: an offline `vllm.LLM` engine in this process, when vLLM is installed.

vLLM applies the model's own chat template and reads OpenAI-style image parts (base64 data URLs) itself, so
messages go to `LLM.chat` unchanged. Without vLLM, building this backend is a one-line BackendConfigError.
Only the missing-vLLM error is tested here; the real engine is tested only where vLLM is importable (it
pins its own torch/transformers, so it lives in its own environment).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from longrl.llm.base import BackendConfigError, BackendRequestError, ChatMessage, check_messages

INSTALL_HINT = "the vllm backend needs vLLM: pip install vllm"


def vllm_available() -> bool:
    """Whether `import vllm` can work here (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def _with_cpu_defaults(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rollout engine's CPU defaults, unless the caller chose: on CPU vLLM reserves 92% of host RAM for its
    KV cache (and refuses to start on a shared machine), spends ~30 s compiling the model (eager instead),
    and its worker crashes on a seeded request whose prefill is chunked over steps (chunked prefill off)."""
    import torch

    from longrl.rollout.vllm import CPU_KV_CACHE_BYTES

    out = dict(options or {})
    if not torch.cuda.is_available():
        if "gpu_memory_utilization" not in out:
            out.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        out.setdefault("enforce_eager", True)
        out.setdefault("enable_chunked_prefill", False)
    return out


class VLLMChatBackend:
    """Chat through `vllm.LLM(model, **options).chat`. A lock serializes calls (one engine, one caller)."""

    def __init__(self, model: str | Path, *, options: Mapping[str, Any] | None = None) -> None:
        if not vllm_available():
            raise BackendConfigError(INSTALL_HINT)
        import vllm

        self._vllm = vllm
        self.name = f"vllm:{Path(str(model)).name}"
        try:
            self.llm = vllm.LLM(model=str(model), **_with_cpu_defaults(options))
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BackendConfigError(f"vLLM cannot load {model}: {reason}") from error
        self._lock = threading.Lock()

    def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """The reply text of the one completion vLLM samples for `messages`."""
        check_messages(messages)
        params = self._vllm.SamplingParams(
            max_tokens=int(max_tokens), temperature=float(temperature), seed=seed
        )
        with self._lock:
            if self.llm is None:
                raise BackendRequestError(f"{self.name}: the backend is closed")
            try:
                (output,) = self.llm.chat(list(messages), params, use_tqdm=False)
            except ValueError as error:  # vLLM's answer to a prompt it cannot take (too long, bad image, ...)
                raise BackendRequestError(f"{self.name}: {str(error).strip()[:300]}") from None
        return output.outputs[0].text

    def close(self) -> None:
        with self._lock:
            self.llm = None
