"""The `vllm` chat backend for real: greedy text on the tiny model equals the `hf` backend's (same chat
template, same weights, fp32).

Runs in the vLLM venv of `.ci/vllm_stage` (vLLM in this process: VLLM_ENABLE_V1_MULTIPROCESSING=0, set by
conftest.py); skipped where vLLM is not installed. The error without vLLM is tested in tests/test_llm_vllm.py.
"""

from __future__ import annotations

import pytest

import longrl.models as M
from longrl.llm import make_backend, user_message
from longrl.rollout.vllm import CPU_KV_CACHE_BYTES

pytest.importorskip("vllm", reason="vLLM is not installed (the vLLM CI stage runs these tests)")


# Spelled out although they are also the backend's CPU defaults (`_with_cpu_defaults`): a fixed KV cache (on
# CPU vLLM's default reserves 92% of host RAM, more than a shared CI machine has free) and eager mode (vLLM
# otherwise compiles the model with torch.compile first, ~30 s of this stage that tests nothing).
VLLM_OPTIONS = {
    "dtype": "float32",
    "max_model_len": 2048,
    "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
    "enforce_eager": True,
}


def test_vllm_greedy_text_matches_hf_backend(tmp_path):
    folder = M.make_tiny(tmp_path / "tiny")
    # A prompt on which the random tiny model's greedy reply is whole characters. On others it emits stray
    # byte tokens, which the two detokenizers render differently (HF as U+FFFD, vLLM holds them back), so
    # the texts would differ although the tokens are the same.
    messages = [user_message("Question: Where is the ball?")]
    hf = make_backend("hf", model=str(folder))
    try:
        expected = hf.chat(messages, max_tokens=8)
    finally:
        hf.close()
    assert expected and "\ufffd" not in expected, expected
    backend = make_backend("vllm", model=str(folder), vllm_options=VLLM_OPTIONS)
    try:
        assert backend.chat(messages, max_tokens=8) == expected
    finally:
        backend.close()
