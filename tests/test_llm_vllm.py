"""The `vllm` chat backend: a clear one-line error without vLLM; with vLLM (its own environment), greedy text
on the tiny model equals the `hf` backend's (same chat template, same weights, fp32)."""

from __future__ import annotations

import importlib.util

import pytest

from longrl.llm import BackendConfigError, make_backend, user_message
from longrl.llm.vllm import INSTALL_HINT, vllm_available

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_one_line_config_error():
    assert not vllm_available()
    with pytest.raises(BackendConfigError) as error:
        make_backend("vllm", model="/models/anything")
    assert str(error.value) == "the vllm backend needs vLLM: pip install vllm" == INSTALL_HINT


@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM (pip install vllm, in its own environment)")
def test_vllm_greedy_text_matches_hf_backend(tmp_path, monkeypatch):
    import longrl.models as M

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: starts in seconds
    folder = tmp_path / "tiny"
    M.make_tiny(folder)
    messages = [user_message("Question: What happens first?")]
    hf = make_backend("hf", model=str(folder))
    expected = hf.chat(messages, max_tokens=8)
    hf.close()
    backend = make_backend(
        "vllm", model=str(folder), vllm_options={"dtype": "float32", "max_model_len": 2048}
    )
    try:
        assert backend.chat(messages, max_tokens=8) == expected
    finally:
        backend.close()
