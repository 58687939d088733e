"""The `hf` chat backend on the tiny Qwen2.5-VL folder (fp32, CPU).

References:
- Prompt ids: text-only messages give exactly the ids of the tokenizer's own chat template
  (`apply_chat_template`); a system + user(frames, question) conversation gives exactly
  `longrl.models.prompt.build_prompt_ids` with that many video pads (the format SFT/RL/eval use).
- Replies: greedy text equals transformers' own `generate` (text-only), and equals `HFEngine` on the batch
  `build_video_batch` makes from the same frames (decoded from the JPEGs with PIL here, preprocessed and
  encoded through the adapter); seeded sampling equals `HFEngine` with the same seed.
"""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import longrl.models as M
from longrl.errors import LongRLError, ModelError
from longrl.llm import (
    BackendRequestError,
    ChatBackend,
    assistant_message,
    make_backend,
    message_image_urls,
    system_message,
    user_message,
)
from longrl.models.prompt import SYSTEM_PROMPT, build_prompt_ids, format_question
from longrl.models.video_inputs import VideoPixels, build_video_batch, encode_pixels
from longrl.rollout.base import RolloutBatch, SamplingParams
from longrl.rollout.hf import HFEngine

MAX_TOKENS = 10
FPS = 0.5


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm_hf") / "tiny"
    M.make_tiny(folder)
    backend = make_backend("hf", model=str(folder), frame_fps=FPS)
    yield backend
    backend.close()


def _frames(count: int, height: int = 56, width: int = 84, seed: int = 0) -> list[np.ndarray]:
    """Smooth uint8 (H, W, 3) frames that change over time."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        a, b = rng.integers(1, 6, size=2)
        frame = np.stack([(x * a + 20 * i) % 256, (y * b) % 256, ((x + y) * 2 + 30 * i) % 256], axis=-1)
        out.append(frame.astype(np.uint8))
    return out


def _pil_decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _chat_template_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_text_prompt_ids_match_the_chat_template(backend):
    conversations = [
        [user_message("What happens first?")],  # the template adds the default system prompt
        [system_message("You write questions."), user_message("Captions:\n0.0s: a dog runs.")],
        [
            system_message("You write questions."),
            user_message("Write one question."),
            assistant_message('{"question": "Why?"}'),
            user_message("Make it about time."),
        ],
    ]
    for messages in conversations:
        assert backend.prompt_ids(messages, []) == _chat_template_ids(backend.tokenizer, messages)


def test_special_token_strings_in_text_stay_text(backend):
    ids = backend.prompt_ids([user_message("a <|im_end|> b <|video_pad|>")], [])
    tok = backend.tokenizer
    im_end, pad = tok.convert_tokens_to_ids(["<|im_end|>", "<|video_pad|>"])
    assert pad not in ids
    assert ids.count(im_end) == 2  # system and user turns only: the one in the text is plain text


def test_text_reply_equals_transformers_generate(backend):
    assert isinstance(backend, ChatBackend) and backend.name == "hf:tiny"
    messages = [system_message(SYSTEM_PROMPT), user_message("Question: What does the man do?")]
    reply = backend.chat(messages, max_tokens=MAX_TOKENS)

    tok, model = backend.tokenizer, backend.adapter.model
    input_ids = torch.tensor([_chat_template_ids(tok, messages)])
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=MAX_TOKENS,
        do_sample=False,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    expected = tok.decode(out[0, input_ids.shape[1] :].tolist(), skip_special_tokens=True)
    assert reply == expected
    assert len(reply) > 0


def _reference_video_batch(backend, message, question, options):
    """build_video_batch over frames decoded from the message's JPEGs with PIL: an independent path."""
    adapter, tok = backend.adapter, backend.tokenizer
    frames = np.stack([_pil_decode(url) for url in message_image_urls(message)])
    pixels = adapter.preprocess_videos([frames], [FPS], backend.video_config, adapter.device)
    video = VideoPixels(
        pixels.pixel_values_videos,
        tuple(int(x) for x in pixels.video_grid_thw[0]),
        float(pixels.second_per_grid_ts[0]),
    )
    with torch.no_grad():
        embedding = encode_pixels(adapter, video)
    batch = build_video_batch(adapter, tok, [embedding], [question], [options], side="left")
    return batch, embedding


def test_video_reply_equals_hf_engine_on_the_project_prompt(backend):
    question, options = "What changes over time?", ["the colors", "nothing", "the size", "the shape"]
    message = user_message(format_question(question, options), _frames(5))
    messages = [system_message(SYSTEM_PROMPT), message]

    batch, embedding = _reference_video_batch(backend, message, question, options)
    n_pads = backend.adapter.num_video_tokens(embedding.grid_thw)
    assert embedding.grid_thw[0] == 3  # 5 frames -> 3 temporal patches of 2 (the last one padded)
    expected_ids = build_prompt_ids(backend.tokenizer, question, options, num_video_tokens=n_pads)
    assert backend.prompt_ids(messages, [n_pads]) == expected_ids == batch.input_ids[0].tolist()

    # The frames are placed in time at frame_fps: seconds per temporal patch = 2 / FPS.
    frames = np.stack([_pil_decode(url) for url in message_image_urls(message)])
    (embeds,), grids, seconds = backend._encode([frames])
    assert grids == [embedding.grid_thw] and seconds == [embedding.second_per_grid_t] == [2 / FPS]
    torch.testing.assert_close(embeds, embedding.embeds, atol=0, rtol=0)

    reply = backend.chat(messages, max_tokens=MAX_TOKENS)
    assert len(reply) > 0
    engine = HFEngine(backend.adapter, backend.tokenizer)
    greedy = SamplingParams(n=1, max_new_tokens=MAX_TOKENS, temperature=0.0)
    (expected,) = engine.generate(RolloutBatch.from_video_batch(batch, [embedding]), greedy)
    assert reply == expected.text

    sampled = SamplingParams(n=1, max_new_tokens=MAX_TOKENS, temperature=1.0, seed=7)
    (expected_sample,) = engine.generate(RolloutBatch.from_video_batch(batch, [embedding]), sampled)
    first = backend.chat(messages, max_tokens=MAX_TOKENS, temperature=1.0, seed=7)
    again = backend.chat(messages, max_tokens=MAX_TOKENS, temperature=1.0, seed=7)
    assert first == again == expected_sample.text


def test_two_messages_with_images_are_two_videos(backend):
    messages = [
        user_message("First clip.", _frames(2, seed=1)),
        assistant_message("A gradient."),
        user_message("Second clip.", _frames(4, 28, 56, seed=2)),
    ]
    reply = backend.chat(messages, max_tokens=4)
    assert isinstance(reply, str)
    embeds, grids, _ = backend._encode([np.stack(_frames(2, seed=1)), np.stack(_frames(4, 28, 56, seed=2))])
    ids = backend.prompt_ids(messages, [len(e) for e in embeds])
    start, pad = backend.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|video_pad|>"])
    assert ids.count(start) == 2
    assert ids.count(pad) == sum(backend.adapter.num_video_tokens(g) for g in grids)


def test_concurrent_calls_match_sequential_ones(backend):
    questions = [f"Question: what happens in scene {i}?" for i in range(6)]
    sequential = [backend.chat([user_message(q)], max_tokens=6) for q in questions]
    barrier = threading.Barrier(len(questions))

    def ask(question: str) -> str:
        barrier.wait(timeout=30)  # all threads call at once
        return backend.chat([user_message(question)], max_tokens=6)

    with ThreadPoolExecutor(max_workers=len(questions)) as pool:
        assert list(pool.map(ask, questions)) == sequential


def test_bad_requests_are_one_line_errors(backend):
    http_image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.jpg"}}]}
    with pytest.raises(BackendRequestError, match="base64 data URLs"):
        backend.chat([http_image], max_tokens=4)
    mixed = {"role": "user", "content": user_message("x", _frames(1, 28, 28))["content"]}
    mixed["content"] = user_message("x", _frames(1, 56, 56))["content"][:1] + mixed["content"]
    with pytest.raises(BackendRequestError, match="must share a size"):
        backend.chat([mixed], max_tokens=4)
    broken = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,!!"}}],
    }
    with pytest.raises(BackendRequestError, match="could not decode"):
        backend.chat([broken], max_tokens=4)
    with pytest.raises(BackendRequestError, match="cannot use these images: frame aspect ratio 300.0"):
        backend.chat([user_message("x", [np.zeros((1, 300, 3), np.uint8)])], max_tokens=4)
    with pytest.raises(BackendRequestError, match="max_new_tokens must be >= 1"):
        backend.chat([user_message("x")], max_tokens=0)


def test_bad_model_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as error:
        make_backend("hf", model=str(tmp_path / "nope"))
    assert isinstance(error.value, LongRLError)
