"""Chat messages and images: the OpenAI message shapes `user_message` builds, and frames <-> data URLs
(reference: PIL's own encoder/decoder; PNG is lossless, so it round-trips exactly)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from longrl.llm import BackendRequestError, message_image_urls, message_text, system_message, user_message
from longrl.llm.images import data_url_to_frame, frame_to_data_url, frame_to_jpeg


def _frame(height: int = 32, width: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_user_message_shapes():
    assert user_message("hi") == {"role": "user", "content": "hi"}
    assert system_message("be brief") == {"role": "system", "content": "be brief"}
    message = user_message("what is shown?", [_frame(), _frame(16, 16)])
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["image_url", "image_url", "text"]
    assert message_text(message) == "what is shown?"
    assert all(url.startswith("data:image/jpeg;base64,") for url in message_image_urls(message))
    assert message_image_urls(user_message("no images")) == []


def test_jpeg_is_what_pil_writes_and_decodes_back():
    frame = _frame()
    expected = io.BytesIO()
    Image.fromarray(frame).save(expected, format="JPEG", quality=75)
    assert frame_to_jpeg(frame, quality=75) == expected.getvalue()
    decoded = data_url_to_frame(frame_to_data_url(frame, quality=75))
    reference = np.asarray(Image.open(io.BytesIO(expected.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(decoded, reference)


def test_png_data_url_round_trips_exactly():
    frame = _frame()
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    np.testing.assert_array_equal(data_url_to_frame(url), frame)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)],
)
def test_frames_must_be_uint8_rgb(bad):
    with pytest.raises(BackendRequestError, match=r"uint8 \(H, W, 3\) RGB"):
        user_message("x", [bad])


def test_bad_data_urls():
    with pytest.raises(BackendRequestError, match="base64 data URLs"):
        data_url_to_frame("https://example.com/a.jpg")
    with pytest.raises(BackendRequestError, match="could not decode"):
        data_url_to_frame("data:image/jpeg;base64," + base64.b64encode(b"not an image").decode())
