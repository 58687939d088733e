"""Vision embeddings through the cache: encode each video once, reuse it for every rollout and prefill.

A video's embedding is valid as long as nothing that produced it changed, so the key hashes all of it:
the video's identity (resolved path + size + mtime, or a hash of its bytes), the frame sampling config, the
pixel budget, the vision encoder's weight fingerprint and the embedding dtype. Lookups go memory
(`longrl.ops.EmbeddingCache`, device pages + optional host tier) -> optional disk tier (one safetensors file
per key, written atomically, so filtering, SFT, RL and eval runs share embeddings) -> `encode_fn`.

With a trainable vision tower the embeddings change every step: the store is bypassed (`encode_fn` runs
every time and nothing is stored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from longrl.errors import VideoError

log = logging.getLogger(__name__)


@dataclass
class VideoEmbedding:
    """One encoded video.

    embeds: [n, H] (n = t*h*w // merge**2) in the store dtype, on the store device.
    grid_thw: the patch grid (t, h, w) it came from (needed for positions); None if the encoder did not say.
    second_per_grid_t: seconds per temporal patch (Qwen2.5-VL's second_per_grid_ts entry).
    timestamps: seconds of the sampled frames, for prompts.
    """

    embeds: torch.Tensor
    grid_thw: tuple[int, int, int] | None = None
    second_per_grid_t: float = 1.0
    timestamps: tuple[float, ...] = field(default_factory=tuple)

    def meta(self) -> dict[str, str]:
        return {
            "grid_thw": json.dumps(list(self.grid_thw) if self.grid_thw is not None else None),
            "second_per_grid_t": repr(float(self.second_per_grid_t)),
            "timestamps": json.dumps([float(t) for t in self.timestamps]),
        }

    @classmethod
    def from_meta(cls, embeds: torch.Tensor, meta: Mapping[str, str]) -> VideoEmbedding:
        grid = json.loads(meta.get("grid_thw", "null"))
        return cls(
            embeds=embeds,
            grid_thw=tuple(int(x) for x in grid) if grid is not None else None,
            second_per_grid_t=float(meta.get("second_per_grid_t", "1.0")),
            timestamps=tuple(json.loads(meta.get("timestamps", "[]"))),
        )


def video_identity(path: str | Path, *, content_hash: bool = False) -> dict[str, Any]:
    """Identity of a video file for cache keys.

    Default: resolved path + size + mtime_ns (cheap; a re-encoded or touched file misses). With
    `content_hash`, a SHA-256 of the bytes instead (path-independent; reads the whole file).
    Raises VideoError if the file does not exist.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as err:
        raise VideoError(f"video {p} cannot be read ({err.strerror or err}); check the path") from None
    if not content_hash:
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": st.st_size}


def _plain(obj: Any) -> Any:
    """A JSON-able canonical form: dataclasses and mappings become sorted dicts, tuples lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)  # exact, and 1.0 != 1 in the key
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot put {type(obj).__name__} into an embedding cache key")


def video_key_parts(
    video: str | Path | Mapping[str, Any],
    *,
    sampling: Any,
    pixel_budget: Any,
    encoder_fingerprint: str,
    content_hash: bool = False,
) -> dict[str, Any]:
    """The parts of a cache key. `video` is a path (identity taken with `video_identity`) or an identity
    mapping; `sampling` and `pixel_budget` are any dataclass/mapping/plain values describing frame sampling
    (fps, max frames, clip range...) and resize budgets; `encoder_fingerprint` is
    `adapter.vision_fingerprint()`."""
    identity = video if isinstance(video, Mapping) else video_identity(video, content_hash=content_hash)
    return {
        "video": dict(identity),
        "sampling": sampling,
        "pixel_budget": pixel_budget,
        "encoder": encoder_fingerprint,
    }


def cache_key(key_parts: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of `key_parts`."""
    text = json.dumps(_plain(key_parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingStore:
    """Memory cache + optional disk tier for video embeddings of one encoder.

    cache: any object with the EmbeddingCache API (`get(key)`, `put(key, emb)`, `keys()`, `stats()`); default a
    new `longrl.ops.EmbeddingCache(capacity_bytes, hidden_size=, dtype=, device=, host_tier_bytes=)`.
    Metadata of each cached embedding (grid, seconds per temporal patch, timestamps) is kept next to the cache
    for exactly the keys the cache still holds: it is pruned whenever the cache evicts, so it never outgrows
    the cache.
    disk_dir: folder of `<key[:2]>/<key>.safetensors` files (`--embed-cache-dir`); None = memory only.
    frozen: whether the encoder is frozen (a bool or a callable checked on every call); False = bypass.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
        capacity_bytes: int = 1 << 30,
        host_tier_bytes: int = 0,
        disk_dir: str | Path | None = None,
        frozen: bool | Callable[[], bool] = True,
        cache: Any | None = None,
    ) -> None:
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.device = torch.device(device)
        if cache is None:
            from longrl.ops import EmbeddingCache

            cache = EmbeddingCache(
                capacity_bytes,
                hidden_size=hidden_size,
                dtype=dtype,
                device=self.device,
                host_tier_bytes=host_tier_bytes,
            )
        self.cache = cache
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir is not None else None
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
        self._frozen = frozen
        self._meta: dict[str, dict[str, str]] = {}
        self.counts = {"hits": 0, "disk_hits": 0, "misses": 0, "bypassed": 0}

    @classmethod
    def for_adapter(cls, adapter, **kwargs: Any) -> EmbeddingStore:
        """A store matching `adapter` (hidden size, dtype, device); bypassed while its tower is trainable."""
        kwargs.setdefault("frozen", lambda: not adapter.vision_trainable)
        return cls(hidden_size=adapter.hidden_size, dtype=adapter.dtype, device=adapter.device, **kwargs)

    @property
    def frozen(self) -> bool:
        return bool(self._frozen() if callable(self._frozen) else self._frozen)

    def key(self, key_parts: Mapping[str, Any]) -> str:
        """The cache key: key_parts plus the store dtype (bf16 and fp32 embeddings differ)."""
        return cache_key({**key_parts, "dtype": str(self.dtype)})

    def contains(self, key_parts: Mapping[str, Any]) -> bool:
        """Whether `get_or_encode(key_parts, ...)` would find an entry (memory or disk tier) without encoding.

        Side-effect free: counts no hit or miss, does not touch the memory cache's LRU order and reads no
        file (a disk file that later proves unreadable or mismatched is re-encoded by `get_or_encode`).
        Ignores `frozen` (a bypassed store still answers what it holds).
        """
        key = self.key(key_parts)
        if key in self.cache and key in self._meta:  # EmbeddingCache.__contains__ counts nothing
            return True
        return self.disk_dir is not None and self._path(key).is_file()

    def get_or_encode(
        self, key_parts: Mapping[str, Any], encode_fn: Callable[[], VideoEmbedding | torch.Tensor]
    ) -> VideoEmbedding:
        """The embedding for `key_parts`: from memory, else disk, else `encode_fn()` (then stored in both).

        encode_fn returns a VideoEmbedding (or a bare [n, H] tensor) and is called only on a miss, or on
        every call while the encoder is not frozen (then nothing is cached, and the embeddings keep their
        autograd graph so the trainable tower gets gradients).
        """
        if not self.frozen:
            self.counts["bypassed"] += 1
            return self._normalize(encode_fn(), detach=False)
        key = self.key(key_parts)
        emb = self.cache.get(key)
        if emb is not None and key in self._meta:
            self.counts["hits"] += 1
            return VideoEmbedding.from_meta(emb, self._meta[key])
        found = self._read_disk(key)
        if found is not None:
            self.counts["disk_hits"] += 1
            self._remember(key, found)
            return found
        self.counts["misses"] += 1
        value = self._normalize(encode_fn())
        self._remember(key, value)
        self._write_disk(key, value, key_parts)
        return value

    def stats(self) -> dict[str, Any]:
        """Store counters (hits, disk_hits, misses, bypassed) and the memory cache's own stats."""
        return {**self.counts, "cache": self.cache.stats()}

    # ---- internals -------------------------------------------------------------------------------------------
    def _normalize(self, value: VideoEmbedding | torch.Tensor, detach: bool = True) -> VideoEmbedding:
        if isinstance(value, torch.Tensor):
            value = VideoEmbedding(value)
        emb = value.embeds
        if emb.ndim != 2 or emb.shape[1] != self.hidden_size:
            raise ValueError(f"video embeddings must be [n, {self.hidden_size}], got {tuple(emb.shape)}")
        value.embeds = (emb.detach() if detach else emb).to(device=self.device, dtype=self.dtype)
        return value

    def _remember(self, key: str, value: VideoEmbedding) -> None:
        try:
            self.cache.put(key, value.embeds)
        except ValueError as err:  # EntryTooLargeError: larger than the whole memory budget
            log.warning("video embedding not kept in memory (%s); raise the embedding cache size", err)
            return
        self._meta[key] = value.meta()
        # The put may have evicted entries (device and host tier both full): forget their metadata. Once per
        # miss, O(entries), next to a vision-tower run.
        if len(self._meta) > 1:
            held = set(self.cache.keys())
            for gone in [k for k in self._meta if k not in held]:
                del self._meta[gone]

    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.safetensors"

    def _read_disk(self, key: str) -> VideoEmbedding | None:
        if self.disk_dir is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeds")
        except (OSError, SafetensorError, ValueError) as err:
            log.warning("ignoring unreadable embedding cache file %s (%s); it will be rewritten", path, err)
            return None
        if (
            meta.get("key") != key
            or emb.dtype != self.dtype
            or emb.ndim != 2
            or emb.shape[1] != self.hidden_size
        ):
            log.warning("ignoring embedding cache file %s: it does not match this store", path)
            return None
        return VideoEmbedding.from_meta(emb.to(self.device), meta)

    def _write_disk(self, key: str, value: VideoEmbedding, key_parts: Mapping[str, Any]) -> None:
        if self.disk_dir is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        meta = value.meta() | {"key": key, "key_parts": json.dumps(_plain(key_parts), sort_keys=True)}
        try:
            save_file({"embeds": value.embeds.detach().cpu().contiguous()}, str(tmp), metadata=meta)
            os.replace(tmp, path)  # atomic: readers see the old file, no file, or the whole new one
        finally:
            if tmp.exists():
                tmp.unlink()
