"""Vision embeddings through the cache. Reference: the adapter's own `encode_video` (hits compared with
torch.equal); vision-tower calls counted with a forward hook."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_model import random_videos, tiny_model

import longrl.models as M
from longrl.models.embedding_store import EmbeddingStore, VideoEmbedding, cache_key, video_key_parts
from longrl.ops import EmbeddingCache, ReferenceEmbeddingCache

GRID = (2, 4, 6)
SAMPLING = {"fps": 1.0, "max_frames": 8, "clip": None}
BUDGET = {"min_pixels": 3136, "max_pixels": 12544}


class Setup:
    """A fresh adapter with a call counter on its vision tower, a video file and an encode function."""

    def __init__(self, tmp_path):
        model, _ = tiny_model(fresh=True)
        self.adapter = M.wrap_model(model)
        self.adapter.set_vision_trainable(False)  # the RL default (load_model does this; tiny() does not)
        self.calls = 0
        self.adapter.vision_tower.register_forward_hook(self._count)
        self.video = tmp_path / "clip.mp4"
        self.video.write_bytes(b"not really a video, but a file with an identity")
        self.pixels, self.grid = random_videos([GRID], seed=11)

    def _count(self, *_):
        self.calls += 1

    def parts(self, sampling=SAMPLING, budget=BUDGET):
        return video_key_parts(
            self.video,
            sampling=sampling,
            pixel_budget=budget,
            encoder_fingerprint=self.adapter.vision_fingerprint(),
        )

    def encode(self) -> VideoEmbedding:
        emb = self.adapter.encode_video(self.pixels, self.grid)[0]
        return VideoEmbedding(emb, GRID, second_per_grid_t=2.0, timestamps=(0.0, 1.0, 2.0, 3.0))


@pytest.fixture(params=["EmbeddingCache", "ReferenceEmbeddingCache"])
def make_store(request):
    cls = {"EmbeddingCache": EmbeddingCache, "ReferenceEmbeddingCache": ReferenceEmbeddingCache}[
        request.param
    ]

    def make(adapter, **kw):
        cache = cls(1 << 24, hidden_size=adapter.hidden_size, dtype=adapter.dtype, device=adapter.device)
        return EmbeddingStore.for_adapter(adapter, cache=cache, **kw)

    return make


@torch.no_grad()
def test_hit_is_identical_and_skips_the_vision_tower(tmp_path, make_store):
    s = Setup(tmp_path)
    store = make_store(s.adapter)
    first = store.get_or_encode(s.parts(), s.encode)
    assert s.calls == 1
    second = store.get_or_encode(s.parts(), s.encode)
    assert s.calls == 1
    assert torch.equal(second.embeds, first.embeds)
    assert torch.equal(first.embeds, s.adapter.encode_video(s.pixels, s.grid)[0])
    assert (second.grid_thw, second.second_per_grid_t, second.timestamps) == (GRID, 2.0, (0.0, 1.0, 2.0, 3.0))
    assert store.stats()["hits"] == 1 and store.stats()["misses"] == 1
    assert store.stats()["cache"]["hits"] == 1


@torch.no_grad()
def test_changes_that_must_miss(tmp_path, make_store):
    s = Setup(tmp_path)
    store = make_store(s.adapter)
    base = store.get_or_encode(s.parts(), s.encode)
    calls = 1
    for parts in (
        s.parts(sampling={**SAMPLING, "fps": 2.0}),
        s.parts(sampling={**SAMPLING, "max_frames": 16}),
        s.parts(budget={**BUDGET, "max_pixels": 2 * 12544}),
    ):
        store.get_or_encode(parts, s.encode)
        calls += 1
        assert s.calls == calls

    st = os.stat(s.video)  # the same file, modified: size+mtime identity changes
    os.utime(s.video, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    store.get_or_encode(s.parts(), s.encode)
    calls += 1
    assert s.calls == calls

    fp = s.adapter.vision_fingerprint()
    next(s.adapter.vision_tower.parameters()).add_(1e-2)  # new vision weights (in place)
    assert s.adapter.vision_fingerprint() != fp
    changed = store.get_or_encode(s.parts(), s.encode)
    assert s.calls == calls + 1
    assert not torch.equal(changed.embeds, base.embeds)
    # ...and the new weights' entry is then a hit.
    assert torch.equal(store.get_or_encode(s.parts(), s.encode).embeds, changed.embeds)
    assert s.calls == calls + 1


@torch.no_grad()
def test_trainable_tower_bypasses_the_cache(tmp_path, make_store):
    s = Setup(tmp_path)
    store = make_store(s.adapter)
    s.adapter.set_vision_trainable(True)
    for i in range(3):
        store.get_or_encode(s.parts(), s.encode)
        assert s.calls == i + 1
    assert store.stats()["bypassed"] == 3 and store.stats()["cache"]["entries"] == 0
    s.adapter.set_vision_trainable(False)  # frozen again: cached from now on
    store.get_or_encode(s.parts(), s.encode)
    store.get_or_encode(s.parts(), s.encode)
    assert s.calls == 4


@torch.no_grad()
def test_disk_tier_round_trip_across_store_instances(tmp_path, make_store):
    s = Setup(tmp_path)
    disk = tmp_path / "embed_cache"
    first = make_store(s.adapter, disk_dir=disk).get_or_encode(s.parts(), s.encode)
    files = list(disk.rglob("*.safetensors"))
    assert len(files) == 1 and not list(disk.rglob("*.tmp"))

    other = make_store(s.adapter, disk_dir=disk)  # a new run: empty memory cache, same folder
    got = other.get_or_encode(s.parts(), s.encode)
    assert s.calls == 1
    assert torch.equal(got.embeds, first.embeds)
    assert (got.grid_thw, got.second_per_grid_t, got.timestamps) == (first.grid_thw, 2.0, first.timestamps)
    assert other.stats()["disk_hits"] == 1
    other.get_or_encode(s.parts(), s.encode)  # now served from memory
    assert other.stats()["hits"] == 1 and s.calls == 1

    files[0].write_bytes(b"truncated")  # a corrupt file is a miss and gets rewritten
    third = make_store(s.adapter, disk_dir=disk)
    assert torch.equal(third.get_or_encode(s.parts(), s.encode).embeds, first.embeds)
    assert s.calls == 2 and third.stats()["misses"] == 1
    fourth = make_store(s.adapter, disk_dir=disk)
    fourth.get_or_encode(s.parts(), s.encode)
    assert s.calls == 2 and fourth.stats()["disk_hits"] == 1


@pytest.mark.parametrize("host_tier", [0, 2], ids=["device_only", "host_tier"])
@pytest.mark.parametrize("cache_cls", [EmbeddingCache, ReferenceEmbeddingCache])
def test_metadata_is_bounded_by_the_cache(cache_cls, host_tier):
    """After many distinct videos the metadata holds exactly the cache's keys (evictions prune it), and hits
    still return each video's own metadata."""
    rows, hidden = 4, 8
    entry = rows * hidden * 4  # one float32 entry = one page
    cache = cache_cls(
        3 * entry, hidden_size=hidden, dtype=torch.float32, page_rows=rows, host_tier_bytes=host_tier * entry
    )
    store = EmbeddingStore(hidden_size=hidden, dtype=torch.float32, cache=cache)
    encoded = []

    def parts(i):
        return video_key_parts(
            {"path": f"/videos/{i}.mp4"}, sampling={"n": 8}, pixel_budget=None, encoder_fingerprint="e"
        )

    def encoder(i):
        def encode():
            encoded.append(i)
            return VideoEmbedding(
                torch.full((rows, hidden), float(i)), (1, 2, 8), float(i), (i / 2, i / 2 + 1)
            )

        return encode

    held = 3 + host_tier
    for i in range(40):
        store.get_or_encode(parts(i), encoder(i))
        assert set(store._meta) == set(cache.keys())
        assert len(store._meta) == min(i + 1, held)
    for i in range(40 - held, 40):  # the newest entries: hits, with their own metadata
        got = store.get_or_encode(parts(i), encoder(i))
        assert torch.equal(got.embeds, torch.full((rows, hidden), float(i)))
        assert (got.grid_thw, got.second_per_grid_t, got.timestamps) == (
            (1, 2, 8),
            float(i),
            (i / 2, i / 2 + 1),
        )
    assert encoded == list(range(40))
    again = store.get_or_encode(parts(0), encoder(0))  # long evicted: encoded again, metadata right
    assert encoded[-1] == 0 and again.second_per_grid_t == 0.0 and len(store._meta) == held


@pytest.mark.parametrize("cache_cls", [EmbeddingCache, ReferenceEmbeddingCache])
def test_contains_sees_both_tiers_and_has_no_side_effects(tmp_path, cache_cls):
    """contains(): True for a memory entry or a disk file, False otherwise; no counters move and the memory
    cache's LRU order is untouched (a probed entry is still the first evicted)."""
    rows, hidden = 4, 8
    entry = rows * hidden * 4  # one float32 entry = one page

    def store_on(disk):
        cache = cache_cls(2 * entry, hidden_size=hidden, dtype=torch.float32, page_rows=rows)
        return EmbeddingStore(hidden_size=hidden, dtype=torch.float32, cache=cache, disk_dir=disk)

    def parts(i):
        return video_key_parts(
            {"path": f"/videos/{i}.mp4"}, sampling={"n": 8}, pixel_budget=None, encoder_fingerprint="e"
        )

    def value(i):
        return lambda: VideoEmbedding(torch.full((rows, hidden), float(i)), (1, 2, 8))

    def counters(store):
        return dict(store.counts), store.cache.stats()

    store = store_on(None)
    assert not store.contains(parts(0))
    store.get_or_encode(parts(0), value(0))
    store.get_or_encode(parts(1), value(1))
    before = counters(store)
    assert store.contains(parts(0)) and store.contains(parts(1)) and not store.contains(parts(2))
    assert counters(store) == before
    store.get_or_encode(parts(2), value(2))  # full: evicts the least recently USED entry, still 0
    assert not store.contains(parts(0)) and store.contains(parts(1)) and store.contains(parts(2))

    disk = tmp_path / "embed_cache"
    store_on(disk).get_or_encode(parts(5), value(5))
    fresh = store_on(disk)  # empty memory, same folder: only the disk tier has it
    before = counters(fresh)
    assert fresh.contains(parts(5)) and not fresh.contains(parts(6))
    assert counters(fresh) == before and fresh.cache.stats()["entries"] == 0


def test_key_is_canonical_and_covers_dtype(tmp_path):
    parts_a = {"video": {"path": "/v.mp4", "size": 3}, "sampling": {"fps": 1.0, "n": 8}, "encoder": "ab"}
    parts_b = {"encoder": "ab", "sampling": {"n": 8, "fps": 1.0}, "video": {"size": 3, "path": "/v.mp4"}}
    assert cache_key(parts_a) == cache_key(parts_b)
    assert cache_key(parts_a) != cache_key({**parts_a, "sampling": {"fps": 1, "n": 8}})  # 1.0 vs 1
    fp32 = EmbeddingStore(hidden_size=8, dtype=torch.float32, cache=object())
    bf16 = EmbeddingStore(hidden_size=8, dtype=torch.bfloat16, cache=object())
    assert fp32.key(parts_a) != bf16.key(parts_a)
    a = tmp_path / "a.mp4"
    a.write_bytes(b"same bytes")
    b = tmp_path / "b.mp4"
    b.write_bytes(b"same bytes")
    ident = video_key_parts(a, sampling=None, pixel_budget=None, encoder_fingerprint="x", content_hash=True)
    ident_b = video_key_parts(b, sampling=None, pixel_budget=None, encoder_fingerprint="x", content_hash=True)
    assert cache_key(ident) == cache_key(ident_b)  # content hash: path-independent
    by_path = video_key_parts(a, sampling=None, pixel_budget=None, encoder_fingerprint="x")
    assert cache_key(by_path) != cache_key(
        video_key_parts(b, sampling=None, pixel_budget=None, encoder_fingerprint="x")
    )


def test_missing_video_is_a_video_error(tmp_path):
    from longrl.errors import VideoError

    with pytest.raises(VideoError, match="nope.mp4"):
        video_key_parts(tmp_path / "nope.mp4", sampling=None, pixel_budget=None, encoder_fingerprint="x")
