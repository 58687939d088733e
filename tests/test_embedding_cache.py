"""EmbeddingCache (paged slab + C++ index + paged_copy_ kernels) against ReferenceEmbeddingCache and plain torch.

Reference: the data a key was last put with (bitwise: a cache only copies, so the tolerance is exact equality,
NaN payloads and -0.0 included), torch.cat / torch.full + copy for batches, and ReferenceEmbeddingCache (an
OrderedDict of tensors with the same page accounting) as the oracle of every hit, miss, eviction and LRU order.
API tests run on both implementations ("paged" = EmbeddingCache with the compiled backend, "reference").
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from helpers import non_contiguous, poison_, requires_cuda

from longrl import _backend
from longrl._ops.embedding_cache import (
    HUGE_PAGE_OUTPUT_BYTES,
    PREFERENCES,
    EmbeddingCache,
    EntryTooLargeError,
    ReferenceEmbeddingCache,
    page_geometry,
)
from longrl.errors import BackendError

IMPLS = ("paged", "reference")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_BITS = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}

needs_extension = pytest.mark.skipif(not _backend.has_extension(), reason="longrl._C is not built")


def make_cache(
    impl: str, *, pages: int, page_rows: int, hidden: int, dtype=torch.float32, device="cpu", **kw
):
    """A cache of exactly `pages` pages of `page_rows` rows."""
    row_bytes = hidden * torch.empty((), dtype=dtype).element_size()
    args = dict(hidden_size=hidden, dtype=dtype, device=device, page_rows=page_rows, **kw)
    if impl == "reference":
        return ReferenceEmbeddingCache(pages * page_rows * row_bytes, **args)
    if not _backend.has_extension():
        pytest.skip("longrl._C is not built")
    backend = "cuda" if torch.device(device).type == "cuda" else "cpp"
    return EmbeddingCache(pages * page_rows * row_bytes, backend=backend, **args)


def rand_entry(
    rows: int, hidden: int, dtype: torch.dtype, gen: torch.Generator, device="cpu", specials=False
):
    x = torch.randn(rows, hidden, generator=gen, dtype=torch.float64).to(dtype)
    if specials:  # a cache copies bits: NaN payloads, infinities and -0.0 must survive
        flat = x.view(-1)
        flat[::7] = float("nan")
        flat[1::11] = float("inf")
        flat[2::13] = -0.0
    return x.to(device)


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert torch.equal(actual.cpu().view(_BITS[actual.dtype]), expected.cpu().view(_BITS[expected.dtype]))


def expected_batch(parts, padded: bool, pad_value: float, multiple: int | None, hidden: int, dtype):
    """The batch built the plain torch way: torch.cat, or torch.full + copy for the padded layout."""
    lengths = [p.shape[0] for p in parts]
    if padded:
        width = max(lengths, default=0)
        if multiple:
            width = -(-width // multiple) * multiple
        batch = torch.full((len(parts), width, hidden), pad_value, dtype=dtype)
        for i, p in enumerate(parts):
            batch[i, : p.shape[0]] = p.cpu()
        return batch
    total = sum(lengths)
    rows = -(-total // multiple) * multiple if multiple else total
    tail = torch.full((rows - total, hidden), pad_value, dtype=dtype)
    return torch.cat([p.cpu() for p in parts] + [tail])


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_put_get_is_bitwise_exact(impl, dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    page_rows, hidden = 4, 24
    cache = make_cache(impl, pages=16, page_rows=page_rows, hidden=hidden, dtype=dtype)
    # one row, a partial page, exactly one page, one page + 1, several pages with a partial last one
    sizes = {
        "one": 1,
        "partial": page_rows - 1,
        "page": page_rows,
        "page+1": page_rows + 1,
        "multi": 3 * page_rows + 2,
    }
    data = {k: rand_entry(n, hidden, dtype, gen, specials=True) for k, n in sizes.items()}
    for k, x in data.items():
        cache.put(k, x)
    for k, x in data.items():
        got = cache.get(k)
        assert_bitwise(got, x)
        assert got.is_contiguous() and got.device == x.device
    assert cache.get("absent") is None


@pytest.mark.parametrize("impl", IMPLS)
def test_get_returns_a_copy_that_survives_eviction(impl) -> None:
    gen = torch.Generator().manual_seed(2)
    cache = make_cache(impl, pages=2, page_rows=4, hidden=8)
    a = rand_entry(8, 8, torch.float32, gen)
    cache.put("a", a)
    got = cache.get("a")
    got.fill_(7.0)  # the caller owns the result: writing it changes nothing in the cache
    assert_bitwise(cache.get("a"), a)
    kept = cache.get("a")
    cache.put("b", rand_entry(8, 8, torch.float32, gen))  # evicts "a" and reuses its pages
    assert "a" not in cache
    assert_bitwise(kept, a)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("padded", [False, True], ids=["packed", "padded"])
@pytest.mark.parametrize("multiple", [None, 8])
def test_get_many_matches_torch_cat_and_pad(impl, dtype, padded, multiple) -> None:
    gen = torch.Generator().manual_seed(3)
    hidden = 12
    cache = make_cache(impl, pages=32, page_rows=5, hidden=hidden, dtype=dtype)
    sizes = [1, 5, 6, 13, 3]
    data = {f"k{i}": rand_entry(n, hidden, dtype, gen, specials=True) for i, n in enumerate(sizes)}
    for k, x in data.items():
        cache.put(k, x)
    keys = ["k3", "k0", "k1", "k3", "k4", "k2"]  # any order, repeats allowed
    batch, lengths = cache.get_many(keys, padded=padded, pad_value=-2.5, pad_to_multiple=multiple)
    expected = expected_batch([data[k] for k in keys], padded, -2.5, multiple, hidden, dtype)
    assert_bitwise(batch, expected)
    assert lengths.dtype == torch.int64 and lengths.tolist() == [data[k].shape[0] for k in keys]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padded", [False, True], ids=["packed", "padded"])
def test_get_many_fully_writes_a_poisoned_out(impl, padded) -> None:
    gen = torch.Generator().manual_seed(4)
    hidden = 16
    cache = make_cache(
        impl, pages=16, page_rows=4, hidden=hidden, dtype=torch.bfloat16, host_tier_bytes=1 << 20
    )
    data = {f"k{i}": rand_entry(n, hidden, torch.bfloat16, gen) for i, n in enumerate([9, 2, 7])}
    for k, x in data.items():
        cache.put(k, x)
    cache.put("big", rand_entry(48, hidden, torch.bfloat16, gen))  # pushes k0..k2 to the host tier
    cache.get("k1")  # back on the device: the batch mixes device and host-tier entries
    keys = ["k0", "k1", "k2"]
    rows = sum(data[k].shape[0] for k in keys)
    shape = (3, 16, hidden) if padded else (-(-rows // 16) * 16, hidden)
    out = poison_(torch.empty(shape, dtype=torch.bfloat16))
    batch, _ = cache.get_many(keys, padded=padded, pad_value=0.5, pad_to_multiple=16, out=out)
    assert batch.data_ptr() == out.data_ptr()
    assert not torch.isnan(out).any()
    assert_bitwise(out, expected_batch([data[k] for k in keys], padded, 0.5, 16, hidden, torch.bfloat16))


@pytest.mark.parametrize("impl", IMPLS)
def test_get_many_empty_and_missing(impl) -> None:
    cache = make_cache(impl, pages=4, page_rows=2, hidden=3)
    batch, lengths = cache.get_many([])
    assert batch.shape == (0, 3) and lengths.numel() == 0
    assert cache.get_many([], padded=True)[0].shape == (0, 0, 3)
    cache.put("a", torch.ones(2, 3))
    with pytest.raises(KeyError, match="nope"):
        cache.get_many(["a", "nope"])
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (1, 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_entries_are_stored_by_value(impl) -> None:
    gen = torch.Generator().manual_seed(5)
    cache = make_cache(impl, pages=8, page_rows=4, hidden=6)
    x = rand_entry(9, 6, torch.float32, gen)
    cache.put("strided", non_contiguous(x))
    cache.put("transposed", x.t().contiguous().t())
    assert_bitwise(cache.get("strided"), x)
    assert_bitwise(cache.get("transposed"), x)


@pytest.mark.parametrize("impl", IMPLS)
def test_put_replaces_an_entry_without_eviction(impl) -> None:
    gen = torch.Generator().manual_seed(6)
    cache = make_cache(impl, pages=4, page_rows=4, hidden=5)
    cache.put("a", rand_entry(15, 5, torch.float32, gen))
    new = rand_entry(3, 5, torch.float32, gen)
    cache.put("a", new)
    assert_bitwise(cache.get("a"), new)
    s = cache.stats()
    assert (s["evictions"], s["entries"], s["pages_used"], s["bytes_used"]) == (0, 1, 1, 3 * 5 * 4)


# ----------------------------------------------------------------------------------------------------------
# eviction, fragmentation, host tier: the paged cache against the oracle
# ----------------------------------------------------------------------------------------------------------


def _random_workload(caches, *, seed: int, steps: int, hidden: int, dtype, device="cpu") -> None:
    """Random puts/gets/get_many/erase on every cache: same results, counters and LRU order after every step,
    and every returned entry equal to the data its key was last put with."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    keys = [f"video-{i}" for i in range(14)]
    truth: dict[str, torch.Tensor] = {}
    for step in range(steps):
        op = rng.choices(["put", "get", "get_many", "erase", "compute"], weights=[5, 5, 3, 1, 2])[0]
        key = rng.choice(keys)
        if op == "put":
            truth[key] = rand_entry(rng.randint(1, 17), hidden, dtype, gen, device)
            for c in caches:
                c.put(key, truth[key])
        elif op == "get":
            got = [c.get(key) for c in caches]
            assert len({g is None for g in got}) == 1, f"step {step}: hit/miss differs"
            for g in got:
                if g is not None:
                    assert_bitwise(g, truth[key])
        elif op == "get_many":
            chosen = rng.sample(keys, rng.randint(1, 4))
            padded = rng.random() < 0.5
            results = []
            for c in caches:
                try:
                    results.append(c.get_many(chosen, padded=padded, pad_value=-1.0, pad_to_multiple=3))
                except KeyError:
                    results.append(None)
            assert len({r is None for r in results}) == 1, f"step {step}: KeyError differs"
            if results[0] is not None:
                expected = expected_batch([truth[k] for k in chosen], padded, -1.0, 3, hidden, dtype)
                for batch, _ in results:
                    assert_bitwise(batch, expected)
        elif op == "erase":
            assert len({c.erase(key) for c in caches}) == 1
        else:
            if key not in caches[0]:
                truth[key] = rand_entry(rng.randint(1, 17), hidden, dtype, gen, device)
            for c in caches:
                assert_bitwise(c.get_or_compute(key, lambda k=key: truth[k]), truth[key])
        stats = [c.stats() for c in caches]
        assert all(s == stats[0] for s in stats), f"step {step} ({op}): {stats}"
        orders = [c.keys() for c in caches]
        assert all(o == orders[0] for o in orders), f"step {step} ({op}): {orders}"
    s = caches[0].stats()
    assert s["evictions"] > 10 and s["hits"] > 10 and s["misses"] > 10, s  # the workload did stress the cache


@needs_extension
@pytest.mark.parametrize("host_tier_rows", [0, 24], ids=["no-host-tier", "host-tier"])
@pytest.mark.parametrize("seed", [0, 1])
def test_eviction_pressure_matches_the_reference(host_tier_rows, seed) -> None:
    hidden = 8
    caches = [
        make_cache(
            impl,
            pages=10,
            page_rows=4,
            hidden=hidden,
            dtype=torch.float16,
            host_tier_bytes=host_tier_rows * 16,
        )
        for impl in IMPLS
    ]
    _random_workload(caches, seed=seed, steps=500, hidden=hidden, dtype=torch.float16)
    if host_tier_rows:
        assert caches[0].stats()["host_hits"] > 0 and caches[0].stats()["dropped"] > 0


@needs_extension
def test_no_fragmentation_after_churn() -> None:
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    page_rows, pages, hidden = 3, 20, 4
    cache = make_cache("paged", pages=pages, page_rows=page_rows, hidden=hidden)
    for i in range(300):  # entries of random sizes come and go; some are erased out of LRU order
        cache.put(f"k{i}", rand_entry(rng.randint(1, 4 * page_rows), hidden, torch.float32, gen))
        if rng.random() < 0.3:
            cache.erase(f"k{rng.randint(0, i)}")
    index = cache._index
    held = [p for k in index.keys() for p in index.pages(k)]
    assert len(held) == len(set(held)) == pages - index.free_pages  # no page shared, none lost
    before = cache.stats()
    free = index.free_pages
    assert 0 < free < pages, "the churn should leave a partly filled slab"
    big = rand_entry(free * page_rows, hidden, torch.float32, gen)  # needs every free page, scattered or not
    cache.put("big", big)
    after = cache.stats()
    assert after["evictions"] == before["evictions"], "an entry needing exactly the free pages must not evict"
    assert after["pages_used"] == pages
    assert_bitwise(cache.get("big"), big)
    whole = rand_entry(
        pages * page_rows, hidden, torch.float32, gen
    )  # the whole slab: evicts everything else
    cache.put("whole", whole)
    assert cache.keys() == ["whole"] and index.free_pages == 0
    assert_bitwise(cache.get("whole"), whole)


@pytest.mark.parametrize("impl", IMPLS)
def test_host_tier_keeps_evicted_entries(impl) -> None:
    gen = torch.Generator().manual_seed(8)
    hidden, row_bytes = 6, 6 * 4
    cache = make_cache(impl, pages=4, page_rows=4, hidden=hidden, host_tier_bytes=20 * row_bytes)
    a, b, c = (rand_entry(n, hidden, torch.float32, gen) for n in (8, 8, 12))
    cache.put("a", a)
    cache.put("b", b)
    cache.put("c", c)  # needs 3 pages: evicts a, then b, to the host tier (16 rows <= 20)
    s = cache.stats()
    assert (s["evictions"], s["entries"], s["host_entries"], s["host_bytes"]) == (2, 1, 2, 16 * row_bytes)
    assert cache.keys() == ["c", "b", "a"] and "a" in cache and len(cache) == 3
    assert_bitwise(cache.get("a"), a)  # host hit: identical data, back on the device (evicting c to the host)
    s = cache.stats()
    assert (s["hits"], s["host_hits"], s["misses"], s["evictions"]) == (0, 1, 0, 3)
    # c (12 rows) joins b (8) in the host tier: 20 rows fit exactly
    assert cache.keys() == ["a", "c", "b"] and s["host_bytes"] == 20 * row_bytes and s["dropped"] == 0
    assert_bitwise(cache.get("a"), a)
    assert cache.stats()["hits"] == 1
    cache.put("d", rand_entry(16, hidden, torch.float32, gen))  # evicts a: the host tier drops its LRU (b)
    s = cache.stats()
    assert cache.keys() == ["d", "a", "c"] and s["dropped"] == 1
    assert cache.get("b") is None and cache.stats()["misses"] == 1
    assert_bitwise(cache.get("c"), c)


@pytest.mark.parametrize("impl", IMPLS)
def test_host_tier_too_small_for_an_entry_drops_it(impl) -> None:
    gen = torch.Generator().manual_seed(9)
    cache = make_cache(impl, pages=2, page_rows=4, hidden=4, host_tier_bytes=5 * 16)
    cache.put("a", rand_entry(8, 4, torch.float32, gen))
    cache.put("b", rand_entry(8, 4, torch.float32, gen))  # a (8 rows) cannot enter a 5-row host tier
    s = cache.stats()
    assert (s["evictions"], s["dropped"], s["host_entries"]) == (1, 1, 0)
    assert "a" not in cache


@pytest.mark.parametrize("impl", IMPLS)
def test_host_hits_in_one_batch_that_evict_each_other(impl) -> None:
    gen = torch.Generator().manual_seed(10)
    cache = make_cache(impl, pages=3, page_rows=4, hidden=5, host_tier_bytes=1 << 16)
    data = {k: rand_entry(8, 5, torch.float32, gen) for k in "abc"}
    for k, x in data.items():
        cache.put(k, x)  # only one 2-page entry fits: a and b end up in the host tier
    keys = ["a", "b", "c", "a"]
    batch, _ = cache.get_many(keys, padded=True)
    assert_bitwise(batch, expected_batch([data[k] for k in keys], True, 0.0, None, 5, torch.float32))
    s = cache.stats()
    assert (s["hits"], s["host_hits"], s["misses"]) == (1, 3, 0)
    for k, x in data.items():  # whatever tier each ended in, the data is intact
        assert_bitwise(cache.get(k), x)


# ----------------------------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------------------------


def _content(key: str, hidden: int, device="cpu") -> torch.Tensor:
    """The one right value of `key`: its rows encode the key, so a wrong page or a torn copy shows."""
    i = int(key.split("-")[1])
    rows = 1 + (i * 7) % 23
    return (torch.arange(rows * hidden, dtype=torch.float32).view(rows, hidden) + 1000.0 * i).to(device)


def _hammer(
    cache, *, threads: int, iters: int, hidden: int, device="cpu", per_thread_stream=False
) -> list[str]:
    keys = [f"v-{i}" for i in range(24)]
    errors: list[str] = []
    start = threading.Barrier(threads)

    def check(key: str, got: torch.Tensor | None) -> None:
        if got is not None and not torch.equal(got.cpu(), _content(key, hidden)):
            errors.append(f"wrong data for {key}")

    def work(seed: int) -> None:
        rng = random.Random(seed)
        stream = torch.cuda.Stream(device) if per_thread_stream else None
        start.wait()
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for _ in range(iters):
                key = rng.choice(keys)
                op = rng.random()
                try:
                    if op < 0.3:
                        cache.put(key, _content(key, hidden, device))
                    elif op < 0.6:
                        check(key, cache.get(key))
                    elif op < 0.8:
                        chosen = rng.sample(keys, 3)
                        try:
                            batch, lengths = cache.get_many(chosen, padded=rng.random() < 0.5)
                        except KeyError:
                            continue
                        if batch.dim() == 3:
                            parts = [batch[i, :n] for i, n in enumerate(lengths.tolist())]
                        else:
                            parts = list(batch.split(lengths.tolist()))
                        for k, part in zip(chosen, parts, strict=True):
                            check(k, part)
                    else:
                        check(key, cache.get_or_compute(key, lambda k=key: _content(k, hidden, device)))
                    if stream is not None:
                        stream.synchronize()
                except Exception as exc:  # noqa: BLE001 - reported below with the thread's context
                    errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a worker hung"
    return errors


@pytest.mark.parametrize("impl", IMPLS)
def test_concurrent_threads_never_see_wrong_data(impl) -> None:
    hidden = 32
    cache = make_cache(impl, pages=12, page_rows=4, hidden=hidden, host_tier_bytes=40 * hidden * 4)
    errors = _hammer(cache, threads=8, iters=250, hidden=hidden)
    assert not errors, errors[:5]
    s = cache.stats()
    assert s["evictions"] > 0 and s["host_hits"] > 0 and s["hits"] > 0
    assert s["pages_used"] <= s["pages_total"] and s["host_bytes"] <= s["host_bytes_capacity"]


@pytest.mark.parametrize("impl", IMPLS)
def test_get_or_compute_computes_once_for_concurrent_callers(impl) -> None:
    cache = make_cache(impl, pages=8, page_rows=4, hidden=4)
    calls = []
    value = torch.arange(20, dtype=torch.float32).view(5, 4)
    start = threading.Barrier(8)
    results: list[torch.Tensor] = []

    def encode() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.2)  # slow "vision encoder": every other thread arrives while it runs
        return value

    def work() -> None:
        start.wait()
        results.append(cache.get_or_compute("clip", encode))

    workers = [threading.Thread(target=work) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert len(calls) == 1
    assert len(results) == 8 and all(torch.equal(r, value) for r in results)
    s = cache.stats()
    assert (s["misses"], s["hits"]) == (1, 7)


@pytest.mark.parametrize("impl", IMPLS)
def test_get_or_compute_after_a_failing_fn(impl) -> None:
    cache = make_cache(impl, pages=4, page_rows=4, hidden=4)

    def broken() -> torch.Tensor:
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        cache.get_or_compute("k", broken)
    assert "k" not in cache
    value = torch.ones(3, 4)
    assert cache.get_or_compute("k", lambda: value) is value  # a miss returns fn's own tensor
    assert torch.equal(cache.get_or_compute("k", broken), value)  # a hit never calls fn


# ----------------------------------------------------------------------------------------------------------
# stats, bookkeeping, errors, backends
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_stats_values(impl) -> None:
    hidden, page_rows = 10, 4
    row_bytes = hidden * 2
    cache = make_cache(
        impl, pages=5, page_rows=page_rows, hidden=hidden, dtype=torch.float16, host_tier_bytes=100
    )
    s = cache.stats()
    assert s == {
        "hits": 0, "misses": 0, "host_hits": 0, "evictions": 0, "dropped": 0, "entries": 0, "host_entries": 0,
        "bytes_used": 0, "bytes_capacity": 5 * page_rows * row_bytes, "pages_used": 0, "pages_total": 5,
        "page_bytes": page_rows * row_bytes, "host_bytes": 0, "host_bytes_capacity": 100,
    }  # fmt: skip
    cache.put("a", torch.zeros(5, hidden, dtype=torch.float16))  # 2 pages
    cache.put("b", torch.zeros(9, hidden, dtype=torch.float16))  # 3 pages: the slab is full
    cache.get("a")
    cache.get("zz")
    cache.put("c", torch.zeros(1, hidden, dtype=torch.float16))  # evicts b (LRU); 9 rows > 5-row host tier
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["dropped"]) == (1, 1, 1, 1)
    assert (s["entries"], s["pages_used"], s["bytes_used"]) == (2, 3, 6 * row_bytes)
    assert len(cache) == 2 and "a" in cache and "b" not in cache and 3 not in cache
    assert cache.erase("a") and not cache.erase("a")
    cache.clear()
    s = cache.stats()
    assert (s["entries"], s["pages_used"], s["bytes_used"], s["hits"]) == (
        0,
        0,
        0,
        1,
    )  # counters survive clear
    assert len(cache) == 0 and cache.keys() == []
    assert "pages=0/5" in repr(cache)


@pytest.mark.parametrize("impl", IMPLS)
def test_errors_are_clear(impl) -> None:
    cache = make_cache(impl, pages=4, page_rows=4, hidden=8, dtype=torch.bfloat16)
    ok = torch.zeros(3, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"\[n_tokens, 8\]"):
        cache.put("k", torch.zeros(3, 9, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"\[n_tokens, 8\]"):
        cache.put("k", torch.zeros(8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="dtype"):
        cache.put("k", ok.float())
    with pytest.raises(ValueError, match="meta"):
        cache.put("k", torch.empty(3, 8, dtype=torch.bfloat16, device="meta"))
    with pytest.raises(ValueError, match="at least one row"):
        cache.put("k", ok[:0])
    with pytest.raises(TypeError):
        cache.put(3, ok)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache.put("k", [[0.0] * 8])  # type: ignore[arg-type]
    cache.put("k", ok)
    with pytest.raises(EntryTooLargeError, match="raise capacity_bytes"):
        cache.put("k", torch.zeros(17, 8, dtype=torch.bfloat16))
    assert_bitwise(cache.get("k"), ok)  # a rejected put changes nothing
    with pytest.raises(ValueError, match="out must be"):
        cache.get_many(["k"], out=torch.empty(4, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous"):
        cache.get_many(["k"], out=torch.empty(8, 3, dtype=torch.bfloat16).t())
    with pytest.raises(ValueError, match="pad_to_multiple"):
        cache.get_many(["k"], pad_to_multiple=0)


def test_bad_construction_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="less than one page"):
        ReferenceEmbeddingCache(100, hidden_size=64, dtype=torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        ReferenceEmbeddingCache(1 << 20, hidden_size=4, dtype=torch.int64)
    with pytest.raises(ValueError, match="hidden_size"):
        ReferenceEmbeddingCache(1 << 20, hidden_size=0)
    with pytest.raises(ValueError, match="host_tier_bytes"):
        ReferenceEmbeddingCache(1 << 20, hidden_size=4, host_tier_bytes=-1)
    with pytest.raises(ValueError, match="cpu or cuda"):
        EmbeddingCache(1 << 20, hidden_size=4, device="meta")
    g = page_geometry(1 << 30, 3584, torch.bfloat16, None, 1 << 20)  # default pages: whole rows in 1 MiB
    assert g.page_rows == (1 << 20) // 7168 and g.num_pages == (1 << 30) // g.page_bytes
    assert g.pages_for(g.page_rows) == 1 and g.pages_for(g.page_rows + 1) == 2
    small = page_geometry(1 << 16, 4, torch.float32, None, 1 << 20)  # a small cache still gets 64 pages
    assert (small.page_rows, small.num_pages) == (64, 64)
    assert page_geometry(1 << 16, 4, torch.float32, 3, 1 << 20).page_rows == 3


def test_backend_selection() -> None:
    ref = EmbeddingCache(1 << 16, hidden_size=4, dtype=torch.float32, backend="torch")
    assert isinstance(ref, ReferenceEmbeddingCache) and ref.backend == "torch"
    auto = EmbeddingCache(1 << 16, hidden_size=4, dtype=torch.float32)
    assert auto.backend == ("cpp" if _backend.has_extension() else "torch")
    with pytest.raises(BackendError):
        EmbeddingCache(1 << 16, hidden_size=4, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            EmbeddingCache(1 << 16, hidden_size=4, device="cuda")


def test_public_door_exports_the_cache() -> None:
    from longrl import ops

    assert ops.EmbeddingCache is EmbeddingCache and ops.ReferenceEmbeddingCache is ReferenceEmbeddingCache
    assert ops.PREFERENCES["embedding_cache"] == PREFERENCES


def test_without_extension_the_cache_is_the_reference(tmp_path: Path) -> None:
    script = (
        "import sys, warnings\n"
        "sys.modules['longrl._C'] = None\n"
        "import torch\n"
        "from longrl._ops.embedding_cache import EmbeddingCache, ReferenceEmbeddingCache\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    c = EmbeddingCache(1 << 16, hidden_size=4, dtype=torch.float32)\n"
        "    c.put('a', torch.ones(3, 4))\n"
        "    assert torch.equal(c.get('a'), torch.ones(3, 4))\n"
        "print(type(c).__name__, sum('longrl._C' in str(w.message) for w in caught))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ReferenceEmbeddingCache", "1"]


# ----------------------------------------------------------------------------------------------------------
# the C++ index and the copy op on their own
# ----------------------------------------------------------------------------------------------------------


@needs_extension
def test_index_lru_pages_and_plans() -> None:
    index = _backend._C.EmbeddingCacheIndex(4, 3)
    scatter, evicted = index.reserve("a", 7)  # 3 pages: 0, 1, 2
    assert scatter.tolist() == [[0, 0, 3], [3, 3, 3], [6, 6, 1]] and evicted == []
    index.reserve("b", 2)  # page 3
    assert index.lookup("a") == 7 and index.lookup("x") is None and index.peek("b") == 2
    assert index.keys() == ["a", "b"]
    scatter, evicted = index.reserve("c", 4)  # needs 2 pages: evicts b (LRU) then a
    assert [(k, n) for k, n, _ in evicted] == [("b", 2), ("a", 7)]
    assert evicted[0][2].tolist() == [[0, 9, 2]] and evicted[1][2].tolist() == [
        [0, 0, 3],
        [3, 3, 3],
        [6, 6, 1],
    ]
    assert index.gather_plan(["c"], [5], 6).tolist() == [[5, 0, 3], [8, 3, 1], [9, -1, 2]]
    s = index.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["entries"], s["rows_used"], s["pages_used"]) == (
        1,
        1,
        2,
        1,
        4,
        2,
    )
    with pytest.raises(ValueError, match="raise capacity_bytes"):
        index.reserve("huge", 13)
    with pytest.raises(ValueError):
        index.reserve("empty", 0)
    with pytest.raises(KeyError):
        index.gather_plan(["nope"], [0])
    with pytest.raises(ValueError):
        _backend._C.EmbeddingCacheIndex(0, 3)


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paged_copy_op(dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    src = rand_entry(10, 7, dtype, gen)
    dst = poison_(torch.empty(9, 7, dtype=dtype))
    plan = torch.tensor([[0, 4, 3], [3, -1, 2], [5, 0, 4]])
    torch.ops.longrl.paged_copy_(dst, src, plan, -1.5)
    expected = torch.cat([src[4:7], torch.full((2, 7), -1.5, dtype=dtype), src[0:4]])
    assert_bitwise(dst, expected)
    for bad in ([[7, 0, 3]], [[0, 8, 3]], [[0, -2, 1]], [[0, 0, -1]]):
        with pytest.raises(RuntimeError, match="outside|segment"):
            torch.ops.longrl.paged_copy_(dst, src, torch.tensor(bad), 0.0)
    with pytest.raises(RuntimeError, match="dtype|is"):
        torch.ops.longrl.paged_copy_(
            dst, src.to(torch.float32 if dtype != torch.float32 else torch.float16), plan, 0.0
        )


# The CPU kernel switches from plain to streaming (non-temporal) stores for calls writing >= 8 MiB.
STREAM_BYTES = 8 << 20


def _random_plan(dst_rows: int, src_rows: int, gen: torch.Generator) -> torch.Tensor:
    """Segments covering dst rows 0..dst_rows in order: runs of 1..300 rows from random source rows, every
    fifth a pad run, so segments start and end at every alignment a row size allows."""
    plan, row = [], 0
    while row < dst_rows:
        n = min(int(torch.randint(1, 301, (1,), generator=gen)), dst_rows - row, src_rows)
        src = -1 if len(plan) % 5 == 4 else int(torch.randint(0, src_rows - n + 1, (1,), generator=gen))
        plan.append([row, src, n])
        row += n
    return torch.tensor(plan, dtype=torch.int64)


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nbytes", [1 << 20, STREAM_BYTES + (1 << 20)], ids=["plain", "streaming"])
def test_paged_copy_op_large_misaligned(dtype, nbytes) -> None:
    # hidden 1001: rows of 2002/4004/8008 bytes, so most segments start off a 16-byte boundary; a dst that
    # starts one row into its storage shifts them again. Exact equality (a copy).
    gen = torch.Generator().manual_seed(13)
    hidden = 1001
    row_bytes = hidden * torch.empty((), dtype=dtype).element_size()
    rows = -(-nbytes // row_bytes)
    src = rand_entry(rows // 2 + 7, hidden, dtype, gen, specials=True)
    storage = poison_(torch.empty(rows + 1, hidden, dtype=dtype))
    dst = storage[1:]
    plan = _random_plan(rows, src.shape[0], gen)
    torch.ops.longrl.paged_copy_(dst, src, plan, -3.25)
    expected = torch.empty_like(dst)
    for d, r, n in plan.tolist():
        expected[d : d + n] = src[r : r + n] if r >= 0 else -3.25
    assert_bitwise(dst, expected)
    assert torch.isnan(storage[0]).all()  # the row before dst is untouched


@needs_extension
@pytest.mark.parametrize("padded", [False, True], ids=["packed", "padded"])
def test_get_many_large_fresh_output(padded) -> None:
    # A fresh result over HUGE_PAGE_OUTPUT_BYTES (advised to use huge pages) written with streaming stores.
    # Rows the kernel missed would hold whatever the fresh memory held, not the entries or the pad value.
    gen = torch.Generator().manual_seed(14)
    hidden, dtype = 1001, torch.bfloat16
    sizes = [4100, 1, 777, 8200]
    cache = make_cache("paged", pages=110, page_rows=128, hidden=hidden, dtype=dtype)
    data = {f"k{i}": rand_entry(n, hidden, dtype, gen, specials=True) for i, n in enumerate(sizes)}
    for k, x in data.items():
        cache.put(k, x)
    keys = ["k3", "k0", "k1", "k2", "k3"]
    batch, _ = cache.get_many(keys, padded=padded, pad_value=-3.25, pad_to_multiple=8)
    assert batch.numel() * batch.element_size() >= HUGE_PAGE_OUTPUT_BYTES > STREAM_BYTES
    assert_bitwise(batch, expected_batch([data[k] for k in keys], padded, -3.25, 8, hidden, dtype))


@needs_extension
def test_advise_huge_pages_keeps_contents() -> None:
    # A hint on memory already written: the data must survive (wrong advice, e.g. MADV_DONTNEED, zeroes it).
    gen = torch.Generator().manual_seed(15)
    for numel in (0, 3, (6 << 20) + 5):
        x = rand_entry(1, numel, torch.float32, gen).view(-1)
        kept = x.clone()
        torch.ops.longrl.advise_huge_pages_(x)
        assert_bitwise(x, kept)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.longrl.advise_huge_pages_(torch.zeros(4, 4).t())


# ----------------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; compare the CUDA slab and kernel with the CPU/reference results)
# ----------------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [7, 64, 3584])  # 7: rows of 14/28/56 bytes take the narrow vector paths
def test_cuda_put_get_many_bitwise(impl, dtype, hidden) -> None:
    gen = torch.Generator().manual_seed(12)
    cache = make_cache(impl, pages=24, page_rows=5, hidden=hidden, dtype=dtype, device="cuda")
    data = {
        f"k{i}": rand_entry(n, hidden, dtype, gen, "cuda", specials=True)
        for i, n in enumerate([1, 4, 5, 6, 17])
    }
    for k, x in data.items():
        cache.put(k, x)
    for k, x in data.items():
        got = cache.get(k)
        assert got.is_cuda
        assert_bitwise(got, x)
    keys = ["k4", "k0", "k2", "k4", "k3"]
    for padded in (False, True):
        shape = (5, 24, hidden) if padded else (36, hidden)
        out = poison_(torch.empty(shape, dtype=dtype, device="cuda"))
        cache.get_many(keys, padded=padded, pad_value=3.0, pad_to_multiple=12, out=out)
        assert_bitwise(out, expected_batch([data[k] for k in keys], padded, 3.0, 12, hidden, dtype))


@requires_cuda
@needs_extension
def test_cuda_paged_copy_matches_cpu() -> None:
    if not _backend.extension_has_cuda():
        pytest.skip("longrl._C was built without CUDA")
    gen = torch.Generator().manual_seed(13)
    for hidden, dtype in (
        (3584, torch.bfloat16),
        (5, torch.float16),
        (3, torch.float32),
        (1, torch.bfloat16),
    ):
        src = rand_entry(300, hidden, dtype, gen)
        perm = torch.randperm(300 // 10, generator=gen)
        plan = torch.tensor(
            [[i * 10, int(p) * 10 if i % 5 else -1, 10 - (i % 3)] for i, p in enumerate(perm)]
        )
        dst_cpu = poison_(torch.empty(300, hidden, dtype=dtype))
        torch.ops.longrl.paged_copy_(dst_cpu, src, plan, 0.25)
        dst_gpu = poison_(torch.empty(300, hidden, dtype=dtype, device="cuda"))
        torch.ops.longrl.paged_copy_(dst_gpu, src.cuda(), plan, 0.25)
        written = torch.zeros(300, dtype=torch.bool)
        for d, _, n in plan.tolist():
            written[d : d + n] = True
        assert_bitwise(dst_gpu.cpu()[written], dst_cpu[written])


@requires_cuda
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_host_tier_is_pinned_and_exact(impl) -> None:
    gen = torch.Generator().manual_seed(14)
    cache = make_cache(
        impl, pages=4, page_rows=8, hidden=256, dtype=torch.bfloat16, device="cuda", host_tier_bytes=1 << 20
    )
    a, b = (rand_entry(30, 256, torch.bfloat16, gen, "cuda", specials=True) for _ in range(2))
    cache.put("a", a)
    cache.put("b", b)  # evicts a to pinned host memory
    assert cache._host.get("a").is_pinned()
    assert_bitwise(cache.get("a"), a)
    assert cache.stats()["host_hits"] == 1
    assert_bitwise(cache.get("b"), b)


@requires_cuda
@needs_extension
@pytest.mark.parametrize("host_tier_rows", [0, 24])
def test_cuda_eviction_pressure_matches_the_reference(host_tier_rows) -> None:
    caches = [
        make_cache(impl, pages=10, page_rows=4, hidden=8, dtype=torch.bfloat16, device="cuda",
                   host_tier_bytes=host_tier_rows * 16)
        for impl in IMPLS
    ]  # fmt: skip
    _random_workload(caches, seed=3, steps=400, hidden=8, dtype=torch.bfloat16, device="cuda")


@requires_cuda
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_threads_on_their_own_streams(impl) -> None:
    hidden = 64
    cache = make_cache(
        impl, pages=12, page_rows=4, hidden=hidden, device="cuda", host_tier_bytes=40 * hidden * 4
    )
    errors = _hammer(cache, threads=6, iters=200, hidden=hidden, device="cuda", per_thread_stream=True)
    assert not errors, errors[:5]
