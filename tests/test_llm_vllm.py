"""The `vllm` chat backend without vLLM: a clear one-line error. The test against real vLLM (greedy text equal
to the `hf` backend's) is tests/vllm_engine/test_vllm_chat_backend.py, run by the vLLM CI stage."""

from __future__ import annotations

import importlib.util

import pytest

from longrl.llm import BackendConfigError, make_backend
from longrl.llm.vllm import INSTALL_HINT, vllm_available

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_one_line_config_error():
    assert not vllm_available()
    with pytest.raises(BackendConfigError) as error:
        make_backend("vllm", model="/models/anything")
    assert str(error.value) == "the vllm backend needs vLLM: pip install vllm" == INSTALL_HINT
