"""The `vllm` chat backend without vLLM: a clear one-line error. The test against real vLLM (greedy text equal
to the `hf` backend's) is tests/vllm_engine/test_vllm_chat_backend.py, run by the vLLM CI stage."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from longrl.llm import BackendConfigError, make_backend
from longrl.llm.vllm import INSTALL_HINT, vllm_available

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_one_line_config_error():
    assert not vllm_available()
    with pytest.raises(BackendConfigError) as error:
        make_backend("vllm", model="/models/anything")
    assert str(error.value) == "the vllm backend needs vLLM: pip install vllm" == INSTALL_HINT


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults apply without CUDA only")
def test_cpu_defaults_fill_only_what_the_caller_left_out():
    from longrl.llm.vllm import _with_cpu_defaults
    from longrl.rollout.vllm import CPU_KV_CACHE_BYTES

    assert _with_cpu_defaults(None) == {
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "enforce_eager": True,
        "enable_chunked_prefill": False,
    }
    chosen = {"enforce_eager": False, "enable_chunked_prefill": True, "kv_cache_memory_bytes": 1 << 20}
    assert _with_cpu_defaults(chosen) == chosen
    # A caller sizing the cache as a share of memory gets no fixed cache on top (vLLM takes one or the other).
    shared = _with_cpu_defaults({"gpu_memory_utilization": 0.3})
    assert "kv_cache_memory_bytes" not in shared and shared["gpu_memory_utilization"] == 0.3
