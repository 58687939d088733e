"""Rollout engines: sample G responses per prompt from cached video embeddings, with per-token logprobs.

`base` defines the interface every engine implements (`SamplingParams`, `RolloutBatch`, `RolloutResult`,
`RolloutEngine`, and the logprob contract the trainer relies on); `hf` is the transformers engine that
decodes with the trainer's own model; `sp_engine.SPHFEngine` is the same engine sequence-parallel over an sp
group (prefill, KV cache and decode sharded; built with the group's ParallelState, so not an `--engine`
name: `longrl eval --sp S` uses it). `engine_class(name)` maps an engine name (the `--engine` choice) to
its class, importing it only then (a vLLM engine imports vLLM).
"""

from __future__ import annotations

import importlib

from longrl.errors import ConfigError
from longrl.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutBatch,
    RolloutEngine,
    RolloutResult,
    SamplingParams,
    pad_responses,
)

# name -> "module:Class"; an engine is added with one line here.
ENGINES = {"hf": "longrl.rollout.hf:HFEngine", "vllm": "longrl.rollout.vllm:VLLMEngine"}

__all__ = [
    "ENGINES",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutResult",
    "SamplingParams",
    "engine_class",
    "pad_responses",
]


def engine_class(name: str) -> type:
    """The engine class registered under `name` (ConfigError naming the known engines otherwise)."""
    if name not in ENGINES:
        raise ConfigError(f"unknown rollout engine {name!r}; choose one of {', '.join(sorted(ENGINES))}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)
