"""Load a local HF model folder into an adapter, and save one back (safetensors, atomically).

Only local folders: nothing is fetched from a hub. Every problem a user can cause (wrong path, a folder
that is not a model, an unsupported architecture, missing weights, a folder that cannot be written) is a
one-line `ModelError` naming the folder and what to do; a bad dtype or device is a `ConfigError`, raised
before anything is loaded. Family-specific files (preprocessing settings) go through the adapter class.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from torch import nn

from longrl.devices import resolve_device
from longrl.errors import ConfigError, ModelError
from longrl.models.base import ModelAdapter
from longrl.models.registry import adapter_class, supported_model_types, wrap_model

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class LoadedModel(NamedTuple):
    """What `load_model` returns; unpacks as `adapter, tokenizer, video_config = load_model(...)`.

    video_config: the folder's video preprocessing (what `longrl.models.video_inputs` takes; a
    `longrl.video.QwenVideoConfig` for Qwen2.5-VL); the folder's full preprocessing, image budgets included,
    is `adapter.processor_config` (what `save_model` writes).
    """

    adapter: ModelAdapter
    tokenizer: object  # a transformers tokenizer
    video_config: Any


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32'|'fp32'|'bfloat16'|'bf16'|'float16'|'fp16' or a torch.dtype -> torch.dtype (ConfigError else)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not supported; use one of float32, bfloat16, float16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from None


def _check_weights(folder: Path) -> None:
    if any((folder / name).is_file() for name in _WEIGHT_FILES):
        return
    for index_name in _WEIGHT_INDEXES:
        index = folder / index_name
        if not index.is_file():
            continue
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise ModelError(f"{index} is not a valid weight index ({err}); re-save the model") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelError(
                f"model folder {folder} lacks weight shard(s) {', '.join(missing[:3])}; copy them in"
            )
        return
    raise ModelError(
        f"model folder {folder} has no weights (model.safetensors or a sharded index); copy them in"
    )


def read_model_config(path: str | Path) -> tuple[Path, dict]:
    """Validate that `path` is a model folder and return (folder, parsed config.json). ModelError otherwise."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(
            f"model folder {folder} does not exist; pass --model PATH of a local HF model folder"
        )
    if not folder.is_dir():
        raise ModelError(f"model path {folder} is not a folder; pass the folder that holds config.json")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{folder} is not a model folder (no config.json); pass the folder of an HF model")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{config_path} is not valid JSON ({err}); fix or re-save the model") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"{config_path} has no model_type; it is not a transformers model config")
    model_type = config["model_type"]
    if model_type not in supported_model_types():
        raise ModelError(
            f"model folder {folder} is a {model_type!r} model, which is not supported; "
            f"supported: {', '.join(supported_model_types())}"
        )
    return folder, config


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    attn_implementation: str = "sdpa",
    vision_trainable: bool = False,
) -> LoadedModel:
    """Load a local HF model folder: (adapter, tokenizer, video preprocessing config).

    The model is in eval mode with its vision tower frozen unless `vision_trainable` (the RL default is a
    frozen tower, so cached vision embeddings stay valid). device: see `longrl.devices.resolve_device`
    ("cpu", "cuda", "cuda:N", "auto"). Raises ModelError for a bad folder and ConfigError for a bad dtype or
    a device that is malformed or not available here (both checked before any weight is read).
    """
    torch_dtype = parse_dtype(dtype)
    torch_device = resolve_device(device)
    folder, config = read_model_config(path)
    _check_weights(folder)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(
            f"model folder {folder} has no tokenizer (tokenizer.json); copy the tokenizer files in"
        )
    cls = adapter_class(config["model_type"])

    from transformers import AutoTokenizer

    try:
        model = cls.hf_model_class().from_pretrained(
            str(folder), dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model folder {folder}: {reason}") from err
    model = model.to(torch_device).eval()
    adapter = cls(model)
    adapter.set_vision_trainable(vision_trainable)
    adapter.processor_config = cls.processor_config_class.from_folder(folder)
    return LoadedModel(adapter, tokenizer, adapter.processor_config.video)


def save_model(
    model: ModelAdapter | nn.Module,
    tokenizer,
    out: str | Path,
    *,
    processor_config: Any | None = None,
    overwrite: bool = False,
) -> Path:
    """Save an HF folder (config, safetensors weights, tokenizer, chat template, preprocessor configs).

    Everything is written into a temporary sibling folder that is renamed to `out` at the end, so a crash
    never leaves a half-written model under `out`. `processor_config` (an `adapter.processor_config_class`)
    defaults to the one the model was loaded with (else the family's defaults). Raises ModelError if `out`
    exists and not `overwrite`, and for a folder that cannot be written (read-only, no space, a path through
    a file). Returns the path of the saved folder.
    """
    adapter = wrap_model(model)
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ModelError(f"{out} already exists; choose a new folder or allow overwriting")
    if processor_config is None:
        processor_config = getattr(adapter, "processor_config", None) or adapter.processor_config_class()
    try:
        _save_atomically(adapter, tokenizer, processor_config, out)
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
        raise ModelError(
            f"cannot save the model to {out}: {reason}{where}; choose a writable folder"
        ) from None
    return out


def _save_atomically(adapter: ModelAdapter, tokenizer, processor_config: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        adapter.model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        processor_config.write(tmp)
        _readable_by_all(tmp)
        if out.exists():
            # Two renames: the old folder is moved aside first and put back if the second rename fails.
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _readable_by_all(folder: Path) -> None:
    # Some writers create files 0600 (temp-file then rename); a model folder is shared (vLLM workers, other
    # users), so give files the permissions the umask allows, as a plain `open()` would have.
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
