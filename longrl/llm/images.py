"""Video frames <-> base64 JPEG data URLs, the image form every chat backend accepts."""

from __future__ import annotations

import base64
import io
import re

import numpy as np

from longrl.llm.base import BackendConfigError, BackendRequestError

_DATA_URL = re.compile(r"data:image/(?P<fmt>[a-zA-Z0-9.+-]+);base64,(?P<data>.*)", re.DOTALL)


def _pillow():
    try:
        from PIL import Image
    except ImportError as error:  # pillow is a small, common dependency; say how to get it
        raise BackendConfigError(
            "sending images to a chat backend needs pillow: pip install pillow"
        ) from error
    return Image


def frame_to_jpeg(frame: np.ndarray, *, quality: int = 90) -> bytes:
    """JPEG bytes of one frame: uint8 numpy array of shape (H, W, 3), RGB."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise BackendRequestError(
            f"an image must be a uint8 (H, W, 3) RGB array, got {frame.dtype} of shape {tuple(frame.shape)}"
        )
    buffer = io.BytesIO()
    _pillow().fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def frame_to_data_url(frame: np.ndarray, *, quality: int = 90) -> str:
    """The frame (uint8 (H, W, 3) RGB) as "data:image/jpeg;base64,..."."""
    return "data:image/jpeg;base64," + base64.b64encode(frame_to_jpeg(frame, quality=quality)).decode("ascii")


def data_url_to_frame(url: str) -> np.ndarray:
    """Decode a base64 image data URL (JPEG, PNG, ...) to a uint8 (H, W, 3) RGB numpy array.

    Raises BackendRequestError for anything else (e.g. an http URL: local backends do not fetch URLs).
    """
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        raise BackendRequestError(f"a local backend takes images as base64 data URLs, got {url[:60]!r}")
    try:
        raw = base64.b64decode(match["data"], validate=True)
        with _pillow().open(io.BytesIO(raw)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except BackendConfigError:
        raise
    except Exception as error:  # binascii.Error, PIL.UnidentifiedImageError, truncated files, ...
        raise BackendRequestError(f"could not decode an image data URL: {error}") from error
