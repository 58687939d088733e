"""load_model / save_model: bad folders give one-line ModelErrors naming the folder; saves are atomic.

Reference for the round trips: the saved model's own state dict (torch.equal).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from tiny_model import tiny_model

import longrl.models as M
from longrl.errors import ConfigError, ModelError
from longrl.models.loading import load_model, save_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return M.tiny(tmp_path_factory.mktemp("tiny") / "model")


def _copy(src, dst, drop=()):
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def _expect(path, match):
    with pytest.raises(ModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert match in msg
    return msg


def test_missing_folder(tmp_path):
    _expect(tmp_path / "nope", "does not exist")


def test_not_a_folder(tmp_path):
    f = tmp_path / "model.txt"
    f.write_text("x")
    _expect(f, "not a folder")


def test_no_config(tmp_path):
    _expect(tmp_path, "no config.json")


def test_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    _expect(tmp_path, "not valid JSON")


def test_unsupported_model_type(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    msg = _expect(d, "'llama'")
    assert "qwen2_5_vl" in msg


def test_missing_weights(tmp_path, tiny_dir):
    _expect(_copy(tiny_dir, tmp_path / "m", drop=["model.safetensors"]), "no weights")


def test_missing_shard(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m", drop=["model.safetensors"])
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    _expect(d, "model-00001-of-00002.safetensors")


def test_corrupt_weights(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    _expect(d, "cannot load")


def test_missing_tokenizer(tmp_path, tiny_dir):
    _expect(_copy(tiny_dir, tmp_path / "m", drop=["tokenizer.json", "tokenizer_config.json"]), "no tokenizer")


def test_bad_dtype(tiny_dir):
    with pytest.raises(ConfigError, match="float64x"):
        load_model(tiny_dir, dtype="float64x")


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("gpu0", "device 'gpu0' is not a device name"),
        ("cuda:99", "device 'cuda:99' is not available"),
        ("meta", "device 'meta' is not supported"),
        pytest.param(
            "cuda",
            "device 'cuda' is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_bad_device_is_a_config_error_before_loading(tmp_path, device, match):
    """One line naming the device, raised before the folder is even read (the folder here does not exist)."""
    with pytest.raises(ConfigError, match=match) as info:
        load_model(tmp_path / "no-such-model", device=device)
    assert "\n" not in str(info.value)


def test_resolve_device():
    from longrl.devices import resolve_device

    assert resolve_device("cpu") == resolve_device(" CPU ") == resolve_device(torch.device("cpu"))
    assert resolve_device("auto") == resolve_device(None)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu0", "", "cuda:-1", "cuda:x"):
        with pytest.raises(ConfigError, match="is not a device name"):
            resolve_device(bad)
    with pytest.raises(ConfigError, match="not available"):
        resolve_device(torch.device("cuda", 99))


def test_save_to_an_unwritable_place_is_a_model_error(tmp_path):
    model, tok = tiny_model()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(
        ModelError, match=r"cannot save the model to .*a-file/model: .*choose a writable"
    ) as info:
        save_model(model, tok, blocker / "model")  # a path through a file
    assert "\n" not in str(info.value)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ModelError, match="Permission denied"):
            save_model(model, tok, locked / "model")


def test_load_dtype_device_and_frozen_tower(tiny_dir):
    adapter, tok, proc = load_model(tiny_dir, dtype="bf16", device="cpu")
    assert adapter.dtype == torch.bfloat16 and adapter.device.type == "cpu"
    assert not adapter.vision_trainable and not adapter.model.training
    assert any(p.requires_grad for p in adapter.decoder_layers.parameters())
    assert tok.convert_tokens_to_ids("<|video_pad|>") == adapter.video_token_id
    assert proc.merge_size == adapter.merge_size == 2
    ref, _ = tiny_model()
    assert torch.equal(adapter.lm_head_weight, ref.lm_head.weight.to(torch.bfloat16))
    assert load_model(tiny_dir, vision_trainable=True).adapter.vision_trainable


def test_save_round_trip_overwrite_and_atomicity(tmp_path, tiny_dir):
    adapter, tok, proc = load_model(tiny_dir)
    with torch.no_grad():
        adapter.lm_head_weight.add_(1.0)  # a "trained" model
    out = save_model(adapter, tok, tmp_path / "saved")
    again = load_model(out).adapter
    assert torch.equal(again.lm_head_weight, adapter.lm_head_weight)
    # the loaded model's preprocessing travels with it (videos: what load_model returned; images too)
    assert again.processor_config.video == proc
    assert again.processor_config == adapter.processor_config

    with pytest.raises(ModelError, match="already exists"):
        save_model(adapter, tok, out)

    # A save that fails half-way leaves the old folder untouched and no temporary folder behind.
    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(ModelError, match=r"cannot save the model to .*saved: disk full"):
        save_model(adapter, Broken(), out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]
    assert torch.equal(load_model(out).adapter.lm_head_weight, adapter.lm_head_weight)

    ref, _ = tiny_model()
    save_model(ref, tok, out, overwrite=True)
    assert torch.equal(load_model(out).adapter.lm_head_weight, ref.lm_head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_processor_config_from_a_qwen_style_folder(tmp_path):
    """Qwen2.5-VL repos ship only preprocessor_config.json: videos then use its pixel budgets."""
    from longrl.models.processor_config import ProcessorConfig, read_processor_config, write_processor_config
    from longrl.video import QwenVideoConfig

    assert read_processor_config(tmp_path) == ProcessorConfig()  # nothing there: Qwen2.5-VL defaults
    cfg = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    got = read_processor_config(tmp_path)
    assert (got.video.min_pixels, got.video.max_pixels) == (3136, 12845056)
    assert (got.image_min_pixels, got.image_max_pixels) == (3136, 12845056)
    custom = ProcessorConfig(
        QwenVideoConfig(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 9, image_mean=(0.5, 0.5, 0.5)),
        image_min_pixels=28 * 28,
        image_max_pixels=28 * 28 * 64,
    )
    write_processor_config(tmp_path, custom)
    assert read_processor_config(tmp_path) == custom
    # transformers 5's nested processor_config.json comes first for the parts it holds (here images only).
    nested = {"image_processor": {"size": {"shortest_edge": 784, "longest_edge": 1568}}}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    got = read_processor_config(tmp_path)
    assert (got.image_min_pixels, got.image_max_pixels, got.video) == (784, 1568, custom.video)
    (tmp_path / "video_preprocessor_config.json").write_text("{oops")
    with pytest.raises(ModelError, match="video_preprocessor_config.json"):
        read_processor_config(tmp_path)
