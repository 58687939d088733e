"""The tiny Qwen2.5-VL factory and its locally trained tokenizer.

References: transformers' own `from_pretrained` (weights compared exactly with torch.equal), the tokenizer
strings themselves (exact round trip), and the config rules vLLM/HF need (head_dim, mrope_section).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_model import tiny_model
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

import longrl.models as M
from longrl.errors import ModelError
from longrl.models import tokenizer as T
from longrl.models.processor_config import read_processor_config
from longrl.models.tiny import TINY_PROCESSOR


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return M.tiny(tmp_path_factory.mktemp("tiny") / "model")


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_folder_loads_with_from_pretrained(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "generation_config.json",
    ):
        assert required in names
    assert not any(n.endswith(".bin") for n in names)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir)
    ref, tok = tiny_model()
    assert _state_equal(model, ref)
    loaded_tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert loaded_tok.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert loaded_tok.chat_template == T.CHAT_TEMPLATE
    assert read_processor_config(tiny_dir) == TINY_PROCESSOR


def test_deterministic_for_a_seed_and_leaves_global_rng_alone():
    rng = torch.random.get_rng_state()
    m0, tok0 = M.tiny(seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng)
    m0b, tok0b = M.tiny(seed=0)
    m1, _ = M.tiny(seed=1)
    assert _state_equal(m0, m0b)
    assert not _state_equal(m0, m1)
    assert tok0.backend_tokenizer.to_str() == tok0b.backend_tokenizer.to_str()


def test_config_rules():
    model, tok = tiny_model()
    cfg = model.config
    text, vision = cfg.text_config, cfg.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim >= 32
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert vision.out_hidden_size == text.hidden_size
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size, vision.depth) == (
        14,
        2,
        2,
        2,
    )
    assert text.vocab_size == len(tok)
    ids = tok.convert_tokens_to_ids
    assert cfg.video_token_id == ids("<|video_pad|>")
    assert cfg.image_token_id == ids("<|image_pad|>")
    assert cfg.vision_start_token_id == ids("<|vision_start|>")
    assert cfg.vision_end_token_id == ids("<|vision_end|>")
    assert text.eos_token_id == tok.eos_token_id == ids("<|im_end|>")
    assert text.pad_token_id == tok.pad_token_id == ids("<|endoftext|>")
    assert model.generation_config.eos_token_id == [ids("<|im_end|>"), ids("<|endoftext|>")]


def test_tokenizer_round_trip_and_special_tokens():
    _, tok = tiny_model()
    assert [tok.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS] == list(range(len(T.SPECIAL_TOKENS)))
    for text in [
        "Question: What happens at 12.5s? Options:\nA. The dog runs.\nB. Nothing",
        "unseen wörds, ünïcode 你好 and emoji 🙂\ttabs  double  spaces\n\n",
        "<|im_start|>user\n<|vision_start|><|video_pad|><|video_pad|><|vision_end|>hi<|im_end|>",
        "<think>2 + 2 = 4</think><answer>B</answer>",
    ]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    # Special and tag tokens are single tokens; tags survive skip_special_tokens (the reward parser needs them).
    for t in (*T.SPECIAL_TOKENS, *T.TAG_TOKENS):
        assert tok.encode(t, add_special_tokens=False) == [tok.convert_tokens_to_ids(t)]
    ids = tok.encode("<think>a</think><answer>C</answer><|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think><answer>C</answer>"
    assert len(tok.encode("the video", add_special_tokens=False)) < len("the video")  # merges were learned


def test_make_tiny_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(ModelError, match=str(tmp_path)):
        M.make_tiny(tmp_path)
    assert (tmp_path / "x.txt").read_text() == "keep me"
    out = M.make_tiny(tmp_path / "new")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_head_dim_below_32_is_refused():
    with pytest.raises(ValueError, match="hidden_size/num_heads"):
        M.tiny(hidden_size=64, num_heads=4)


def test_the_demo_task_words_are_whole_tokens():
    """Every region, colour and count the synthetic task answers with is one token (so a tiny model decides it
    at one position), and text with hyphens still round-trips exactly."""
    from longrl.data.synthetic import PALETTE, REGIONS

    tok = T.train_tokenizer()
    for word in (*REGIONS, *PALETTE, "0", "1", "2", "3"):
        assert len(tok.encode(f" {word}", add_special_tokens=False)) == 1, word
    for text in ("a well-known e-mail: top-left, x-ray-like -- don't", "bottom-right.\n\n  12.5s"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
