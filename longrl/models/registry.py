"""config.json `model_type` -> ModelAdapter class. A new family is a new adapter file plus one line here."""

from __future__ import annotations

import importlib

from longrl.errors import ModelError
from longrl.models.base import ModelAdapter

# "module:Class", imported on first use so loading one family never imports another's code.
_ADAPTERS: dict[str, str] = {
    "qwen2_5_vl": "longrl.models.qwen2_5_vl:Qwen2_5_VLAdapter",
}


def register_adapter(model_type: str, adapter: type[ModelAdapter] | str) -> None:
    """Serve `model_type` with `adapter` (a class or a "module:Class" path); replaces an existing entry."""
    if isinstance(adapter, type):
        adapter = f"{adapter.__module__}:{adapter.__qualname__}"
    _ADAPTERS[model_type] = adapter


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class(model_type: str) -> type[ModelAdapter]:
    """The adapter class for a config `model_type`; ModelError naming the supported types otherwise."""
    target = _ADAPTERS.get(model_type)
    if target is None:
        raise ModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def wrap_model(model) -> ModelAdapter:
    """Wrap an already-built HF model (e.g. from `tiny()`) in the adapter for its `config.model_type`."""
    if isinstance(model, ModelAdapter):
        return model
    return adapter_class(model.config.model_type)(model)
