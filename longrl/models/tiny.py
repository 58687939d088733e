"""A tiny random Qwen2.5-VL with a locally trained tokenizer, for tests, demos and CI.

`tiny()` builds it in memory; `tiny(out_dir)` / `make_tiny(out_dir)` (the `longrl models make-tiny OUT`
command) also saves it as an ordinary HF folder (config.json, model.safetensors, tokenizer files, chat
template, preprocessor configs) that `from_pretrained` and `longrl.models.load_model` read. Nothing is
downloaded. The same seed and sizes always give the same weights and tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from longrl.errors import ModelError
from longrl.models.loading import save_model
from longrl.models.processor_config import ProcessorConfig
from longrl.models.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    train_tokenizer,
)
from longrl.video.qwen_layout import QwenVideoConfig

if TYPE_CHECKING:  # transformers is imported inside the functions: `import longrl.models` stays fast
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

# Small pixel budgets so demos on CPU stay fast: 4..16 merged 28x28 tokens per frame pair.
TINY_PROCESSOR = ProcessorConfig(QwenVideoConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16))


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    vision_heads: int = 2,
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with tiny sizes and token ids taken from `tokenizer`.

    head_dim = hidden_size / num_heads must be >= 32 (vLLM's CPU attention has no smaller kernels) and even;
    mrope_section splits head_dim / 2 rotary frequencies over (time, height, width) like Qwen's 16/24/24.
    """
    from transformers import Qwen2_5_VLConfig

    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or head_dim < 32 or head_dim % 4:
        raise ValueError(
            f"hidden_size/num_heads must be a multiple of 4 and >= 32, got {hidden_size}/{num_heads}"
        )
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 32 -> [4, 6, 6]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (ENDOFTEXT, IM_END, VISION_START)}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
    }
    vision = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "intermediate_size": 2 * vision_hidden_size,
        "num_heads": vision_heads,
        "in_channels": 3,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "out_hidden_size": hidden_size,
        "fullatt_block_indexes": [vision_depth - 1],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_PAD),
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END),
        tie_word_embeddings=False,
    )


def tiny(
    out_dir: str | Path | None = None,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vision_depth: int = 2,
    overwrite: bool = False,
) -> Path | tuple[Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast]:
    """Build a tiny random Qwen2.5-VL (fp32, CPU) and its tokenizer.

    Returns `(model, tokenizer)` when `out_dir` is None; otherwise saves an HF folder there and returns its
    path. Weights are drawn from `seed` without touching the caller's global RNG state.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = train_tokenizer()
    config = tiny_config(
        tokenizer,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vision_depth=vision_depth,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    if out_dir is None:
        return model, tokenizer
    return save_model(model, tokenizer, out_dir, processor_config=TINY_PROCESSOR, overwrite=overwrite)


def make_tiny(out_dir: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """`longrl models make-tiny OUT`: write the default tiny model to `out_dir` and return its path.

    Raises ModelError if `out_dir` exists and is not empty (unless `overwrite`).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} already exists and is not empty; choose a new folder or pass --overwrite")
    path = tiny(out, seed=seed, overwrite=True)
    assert isinstance(path, Path)
    return path
