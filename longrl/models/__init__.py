"""Model layer: adapters over HF VLMs, loading/saving, the tiny test model, the prompt format, and vision
embeddings through the cache.

Names are imported on first use (transformers takes seconds to import). `tiny` and `make_tiny` are imported
eagerly (cheap: tiny.py imports transformers inside its functions) so that `longrl.models.tiny` is the
function, not the submodule of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

from longrl.models.tiny import make_tiny, tiny

_EXPORTS = {
    "ModelAdapter": "longrl.models.base",
    "MultimodalInputs": "longrl.models.base",
    "Qwen2_5_VLAdapter": "longrl.models.qwen2_5_vl",
    "adapter_class": "longrl.models.registry",
    "register_adapter": "longrl.models.registry",
    "wrap_model": "longrl.models.registry",
    "load_model": "longrl.models.loading",
    "save_model": "longrl.models.loading",
    "LoadedModel": "longrl.models.loading",
    "ProcessorConfig": "longrl.models.processor_config",
    "EmbeddingStore": "longrl.models.embedding_store",
    "VideoEmbedding": "longrl.models.embedding_store",
    "video_key_parts": "longrl.models.embedding_store",
    "VideoBatch": "longrl.models.video_inputs",
    "encode_video_file": "longrl.models.video_inputs",
    "load_video_pixels": "longrl.models.video_inputs",
    "load_video_file": "longrl.models.video_inputs",
    "VideoPixels": "longrl.models.video_inputs",
    "VideoPixelInputs": "longrl.models.base",
    "num_video_tokens": "longrl.models.base",
    "build_video_batch": "longrl.models.video_inputs",
}

__all__ = ["make_tiny", "tiny", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'longrl.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
