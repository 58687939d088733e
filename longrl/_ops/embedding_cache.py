"""EmbeddingCache: a device-resident cache of vision embeddings, so every rollout and prefill of a video reuses
one encode of it (MR-SP stage 1).

Entries are 2-D embeddings [n_tokens, hidden_size] (one dtype and hidden size per cache), keyed by a string.

`EmbeddingCache` (backends "cpp" on CPU, "cuda" on CUDA):
  * storage: one slab tensor [num_pages, page_rows, hidden_size] allocated once on the device and cut into
    equal pages. An entry of n rows takes ceil(n / page_rows) pages, anywhere in the slab, so entries coming
    and going never fragment it: an entry needing k pages fits whenever k pages are free.
  * index: `longrl._C.EmbeddingCacheIndex` (C++): key -> pages, least-recently-used order, free-page list,
    hit/miss/eviction counters, behind a std::mutex. It returns copy plans; `torch.ops.longrl.paged_copy_`
    runs them (a batched memcpy of row segments: C++ at::parallel_for on CPU, a vectorized CUDA kernel on GPU).
  * eviction: a new entry evicts least-recently-used entries until its pages are free. An entry larger than
    the whole slab is rejected with `EntryTooLargeError` (nothing changes).
  * host tier (host_tier_bytes > 0): evicted entries move to host memory (pinned for a CUDA cache) instead
    of being dropped, in an LRU of their own byte budget; a lookup that misses the slab but hits the host
    tier copies the entry back into the slab (and into the result) and counts a `host_hit`.
  * results are fresh tensors gathered from the pages, never views of the slab: an entry's pages are reused
    as soon as it is evicted, so a view could change under the caller. On the CPU a fresh result of 32 MiB
    or more is advised to use transparent huge pages (Linux, where THP is "madvise" or "always"): first
    writes to a new buffer otherwise cost one page fault per 4 KiB, most of the time of a large gather.
  * thread safety: one lock per cache is held around each whole operation (index update + its copies), so
    no copy can read pages that a concurrent put is evicting and overwriting. Copies are memory-bound and
    parallel inside one call (at::parallel_for in an OpenMP build / the whole GPU), so serializing calls
    costs little; on CUDA the lock only covers launching the copies. Copies run on the caller's current
    stream; when a call comes from a different stream than the previous one, it first waits for that
    stream, so slab reads and writes happen in the order the lock granted them.

`ReferenceEmbeddingCache` (backend "torch"): the plain "dict of tensors" (an OrderedDict LRU of cloned
tensors) with the same API and the same accounting: entries are charged in whole pages of the same
geometry, so it evicts exactly what the paged cache evicts. It is the fallback when `longrl._C` is missing
(`EmbeddingCache(...)` then returns one), the oracle of the tests and the baseline of the benchmark.

Counters (`stats()`): `hits` (served from the device), `host_hits` (served from the host tier), `misses`
(found nowhere), `evictions` (entries pushed out of the device), `dropped` (entries lost: evicted with no room
in the host tier, or pushed out of it). `__contains__`, `len()` and `keys()` count nothing. `clear()` drops
every entry and keeps the counters.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from longrl import _backend
from longrl.errors import LongRLError

# Backends "auto" tries for EmbeddingCache, best first (longrl.ops.PREFERENCES["embedding_cache"] is this).
PREFERENCES: dict[str, tuple[str, ...]] = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "torch")}
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DEFAULT_PAGE_BYTES = 1 << 20
MIN_DEFAULT_PAGES = 64  # default pages shrink below DEFAULT_PAGE_BYTES to give a small cache this many
# A fresh CPU result of at least this size is advised to use transparent huge pages (advise_huge_pages_).
# glibc's malloc serves every block this large with a mapping of its own (its mmap threshold never exceeds
# 32 MiB), so the advice only ever covers memory of this result and goes away with it; smaller blocks may
# sit in the heap, whose memory other allocations reuse.
HUGE_PAGE_OUTPUT_BYTES = 32 << 20


class EntryTooLargeError(LongRLError, ValueError):
    """An entry needs more pages than the whole cache has."""


@dataclass(frozen=True)
class PageGeometry:
    """How a cache's byte budget is cut into pages of whole rows."""

    hidden_size: int
    row_bytes: int
    page_rows: int
    num_pages: int

    @property
    def page_bytes(self) -> int:
        return self.page_rows * self.row_bytes

    @property
    def capacity_bytes(self) -> int:
        return self.num_pages * self.page_bytes

    def pages_for(self, rows: int) -> int:
        return -(-rows // self.page_rows)


def page_geometry(
    capacity_bytes: int, hidden_size: int, dtype: torch.dtype, page_rows: int | None, page_bytes: int
) -> PageGeometry:
    """Pages of `page_rows` rows, as many as fit in `capacity_bytes`.

    Default page_rows: as many whole rows as fit in `page_bytes`, or in capacity_bytes / 64 when that is
    smaller (so a small cache still has dozens of pages), and at least one.
    """
    if hidden_size < 1:
        raise ValueError(f"EmbeddingCache: hidden_size must be >= 1, got {hidden_size}")
    if dtype not in DTYPES:
        raise ValueError(f"EmbeddingCache: dtype must be one of {DTYPES}, got {dtype}")
    row_bytes = hidden_size * torch.empty((), dtype=dtype).element_size()
    if page_rows is None:
        page_rows = max(1, min(page_bytes, capacity_bytes // MIN_DEFAULT_PAGES) // row_bytes)
    if page_rows < 1:
        raise ValueError(f"EmbeddingCache: page_rows must be >= 1, got {page_rows}")
    num_pages = capacity_bytes // (page_rows * row_bytes)
    if num_pages < 1:
        raise ValueError(
            f"EmbeddingCache: capacity_bytes={capacity_bytes} is less than one page ({page_rows} rows x "
            f"{row_bytes} bytes); raise capacity_bytes or use smaller pages"
        )
    return PageGeometry(
        hidden_size=hidden_size, row_bytes=row_bytes, page_rows=page_rows, num_pages=num_pages
    )


def _normalize_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type not in PREFERENCES:
        raise ValueError(f"EmbeddingCache: device must be cpu or cuda, got {device}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"EmbeddingCache: device={device} but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


class _HostTier:
    """LRU of entries evicted from the device, in host memory (pinned for a CUDA cache), own byte budget."""

    def __init__(self, capacity_bytes: int, pinned: bool) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"EmbeddingCache: host_tier_bytes must be >= 0, got {capacity_bytes}")
        self.capacity = capacity_bytes
        self.pinned = pinned
        self.bytes = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.capacity

    def put(self, key: str, held: torch.Tensor) -> int:
        """Store `held` as the most recent entry; returns how many older entries were dropped to make room."""
        self.pop(key)
        nbytes = held.numel() * held.element_size()
        dropped = 0
        while self.bytes + nbytes > self.capacity:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
            dropped += 1
        self._entries[key] = held
        self.bytes += nbytes
        return dropped

    def get(self, key: str) -> torch.Tensor | None:
        return self._entries.get(key)

    def pop(self, key: str) -> torch.Tensor | None:
        held = self._entries.pop(key, None)
        if held is not None:
            self.bytes -= held.numel() * held.element_size()
        return held

    def keys(self) -> list[str]:
        return list(reversed(self._entries))

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _round_up(n: int, multiple: int | None) -> int:
    if multiple is None:
        return n
    if multiple < 1:
        raise ValueError(f"EmbeddingCache: pad_to_multiple must be >= 1, got {multiple}")
    return -(-n // multiple) * multiple


class _CacheBase:
    """What both implementations share: argument checks, batch layout, get/get_many/get_or_compute."""

    backend: str
    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    geometry: PageGeometry

    def _setup(
        self,
        capacity_bytes: int,
        hidden_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        page_rows: int | None,
        page_bytes: int,
        host_tier_bytes: int,
    ) -> None:
        self.device = _normalize_device(device)
        self.dtype = dtype
        self.hidden_size = hidden_size
        self.geometry = page_geometry(capacity_bytes, hidden_size, dtype, page_rows, page_bytes)
        self._host = _HostTier(host_tier_bytes, pinned=self.device.type == "cuda")
        self._lock = threading.RLock()
        self._inflight: dict[str, threading.Event] = {}
        self._last_stream: torch.cuda.Stream | None = None
        self._host_hits = 0
        self._dropped = 0

    # -- to implement ---------------------------------------------------------------------------------------

    def put(self, key: str, emb: torch.Tensor) -> None:
        raise NotImplementedError

    def _gather_locked(
        self,
        keys: Sequence[str],
        padded: bool,
        pad_value: float,
        pad_to_multiple: int | None,
        out: torch.Tensor | None,
        allow_missing: bool,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------

    def get(self, key: str) -> torch.Tensor | None:
        """The entry as a fresh contiguous tensor [n_tokens, hidden_size] on the cache's device, or None.

        Counts a hit, a host hit (the entry is copied back into the device tier) or a miss, and marks the
        entry most recently used.
        """
        key = _check_key(key)
        with self._lock:
            found = self._gather_locked([key], False, 0.0, None, None, allow_missing=True)
        return None if found is None else found[0]

    def get_many(
        self,
        keys: Sequence[str],
        *,
        padded: bool = False,
        pad_value: float = 0.0,
        pad_to_multiple: int | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather several entries (in `keys` order; repeats allowed) into one contiguous batch.

        Returns (batch, lengths) with lengths int64 [N] on the CPU (rows of each entry) and batch on the cache's
        device in its dtype:
          packed (padded=False): [sum(lengths), hidden_size], entries one after another; with pad_to_multiple
              the total is rounded up to a multiple of it and the extra rows hold pad_value.
          padded (padded=True):  [N, L, hidden_size] with L = max(lengths) rounded up to pad_to_multiple; rows
              past an entry's length hold pad_value.
        `out`, if given, must be a contiguous tensor of exactly that shape, dtype and device; it is fully
        written and returned. Each key counts a hit, host hit or miss; raises KeyError naming the missing keys
        if any is in neither tier (after counting).
        """
        keys = [_check_key(k) for k in keys]
        _round_up(0, pad_to_multiple)  # a bad pad_to_multiple fails before anything is counted
        with self._lock:
            found = self._gather_locked(
                keys, padded, float(pad_value), pad_to_multiple, out, allow_missing=False
            )
        assert found is not None
        return found

    def get_or_compute(self, key: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The entry if cached (as `get`), else `fn()` stored under `key` and returned (fn's own tensor).

        Concurrent calls for one missing key call `fn` once: the others wait for it and then read the entry
        (a miss for the first caller, hits for the others). `fn` runs without the cache lock held. If `fn` or
        the store fails, the error reaches the caller that ran it and a waiting caller tries again itself.
        """
        key = _check_key(key)
        while True:
            with self._lock:
                flight = self._inflight.get(key)
                leader = flight is None
                if leader:
                    found = self._gather_locked([key], False, 0.0, None, None, allow_missing=True)
                    if found is not None:
                        return found[0]
                    flight = self._inflight[key] = threading.Event()
            if not leader:
                flight.wait()
                continue
            try:
                emb = fn()
                self.put(key, emb)
                return emb
            finally:
                with self._lock:
                    del self._inflight[key]
                flight.set()

    def _check_entry(self, emb: torch.Tensor) -> torch.Tensor:
        """The entry as a contiguous [n, hidden_size] tensor, after checking shape, dtype, device and size."""
        if not isinstance(emb, torch.Tensor):
            raise TypeError(f"EmbeddingCache: an entry must be a tensor, got {type(emb).__name__}")
        if emb.dim() != 2 or emb.shape[1] != self.hidden_size:
            raise ValueError(
                f"EmbeddingCache: an entry must be [n_tokens, {self.hidden_size}], got {tuple(emb.shape)}"
            )
        if emb.shape[0] < 1:
            raise ValueError("EmbeddingCache: an entry needs at least one row")
        if emb.dtype != self.dtype:
            raise ValueError(
                f"EmbeddingCache: entry dtype {emb.dtype} != cache dtype {self.dtype}; convert it first"
            )
        if emb.device != self.device:
            raise ValueError(
                f"EmbeddingCache: entry is on {emb.device}, the cache on {self.device}; move it first"
            )
        need = self.geometry.pages_for(emb.shape[0])
        if need > self.geometry.num_pages:
            raise EntryTooLargeError(
                f"EmbeddingCache: an entry of {emb.shape[0]} rows needs {need} pages of "
                f"{self.geometry.page_rows} rows but the cache has {self.geometry.num_pages} "
                f"({self.geometry.capacity_bytes} bytes); raise capacity_bytes"
            )
        return emb.detach().contiguous()

    def _layout(
        self, lengths: list[int], padded: bool, pad_to_multiple: int | None
    ) -> tuple[tuple[int, ...], list[int], int]:
        """(batch shape, first row of each entry in the batch seen as [rows, hidden], padded width or 0)."""
        if padded:
            width = _round_up(max(lengths, default=0), pad_to_multiple)
            return (len(lengths), width, self.hidden_size), [i * width for i in range(len(lengths))], width
        starts, total = [], 0
        for n in lengths:
            starts.append(total)
            total += n
        return (_round_up(total, pad_to_multiple), self.hidden_size), starts, 0

    def _output(self, out: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        if out is None:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        if tuple(out.shape) != shape or out.dtype != self.dtype or out.device != self.device:
            raise ValueError(
                f"EmbeddingCache: out must be {shape} {self.dtype} on {self.device}, got {tuple(out.shape)} "
                f"{out.dtype} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("EmbeddingCache: out must be contiguous")
        return out

    def _order_streams(self) -> None:
        """Make the current CUDA stream wait for the stream of the previous cache operation (if different)."""
        if self.device.type != "cuda":
            return
        stream = torch.cuda.current_stream(self.device)
        if self._last_stream is not None and self._last_stream != stream:
            stream.wait_stream(self._last_stream)
        self._last_stream = stream

    def _host_buffer(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, self.hidden_size), dtype=self.dtype, pin_memory=self._host.pinned)

    def _common_stats(self) -> dict[str, int]:
        return {
            "host_hits": self._host_hits,
            "dropped": self._dropped,
            "host_entries": len(self._host),
            "host_bytes": self._host.bytes,
            "host_bytes_capacity": self._host.capacity,
            "bytes_capacity": self.geometry.capacity_bytes,
            "page_bytes": self.geometry.page_bytes,
            "pages_total": self.geometry.num_pages,
        }

    def __repr__(self) -> str:
        s = self.stats()  # type: ignore[attr-defined]
        return (
            f"{type(self).__name__}(backend={self.backend!r}, device={self.device}, dtype={self.dtype}, "
            f"hidden_size={self.hidden_size}, pages={s['pages_used']}/{s['pages_total']} of "
            f"{self.geometry.page_rows} rows, entries={s['entries']}, host_entries={s['host_entries']})"
        )


def _used_on_current_stream(t: torch.Tensor) -> None:
    """A stored CUDA tensor read on another stream than it was made on must not be freed for reuse before
    that read is done (the caching allocator only tracks its own stream unless told)."""
    if t.is_cuda:
        t.record_stream(torch.cuda.current_stream(t.device))


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"EmbeddingCache: keys are strings, got {type(key).__name__}")
    return key


class EmbeddingCache(_CacheBase):
    """Paged device cache of [n_tokens, hidden_size] embeddings keyed by strings (see the module docstring).

    capacity_bytes: device budget; the slab [num_pages, page_rows, hidden_size] is allocated up front
        (num_pages = capacity_bytes // page size).
    hidden_size, dtype (float32/float16/bfloat16/float64), device ("cpu" or "cuda[:i]"): of every entry.
    page_rows: rows per page; default: as many as fit in page_bytes (1 MiB; less for a cache under 64 MiB,
        so it still has 64 pages), at least one.
    host_tier_bytes: budget of the host tier for evicted entries (0: evicted entries are dropped).
    backend: None/"auto", "cpp" (CPU), "cuda" (CUDA) or "torch" (returns a ReferenceEmbeddingCache).
    """

    def __new__(
        cls, capacity_bytes: int, *, device: torch.device | str = "cpu", backend: str | None = None, **options
    ) -> _CacheBase:
        # Only device and backend matter here; `options` are __init__'s other keywords (documented there and
        # checked by whichever __init__ runs), so the signature is not written twice.
        device = _normalize_device(device)
        chosen = _backend.resolve("embedding_cache", device.type, PREFERENCES[device.type], backend)
        if chosen == "torch":
            # Not an instance of cls, so Python skips __init__: the reference is built here, fully.
            return ReferenceEmbeddingCache(capacity_bytes, device=device, **options)
        self = super().__new__(cls)
        self.backend = chosen
        return self

    def __init__(
        self,
        capacity_bytes: int,
        *,
        hidden_size: int,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        page_rows: int | None = None,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        host_tier_bytes: int = 0,
        backend: str | None = None,
    ) -> None:
        self._setup(capacity_bytes, hidden_size, dtype, device, page_rows, page_bytes, host_tier_bytes)
        g = self.geometry
        self._index = _backend._C.EmbeddingCacheIndex(g.num_pages, g.page_rows)
        self._slab = torch.empty((g.num_pages, g.page_rows, hidden_size), dtype=dtype, device=self.device)
        self._slab_rows = self._slab.view(-1, hidden_size)

    # -- public ---------------------------------------------------------------------------------------------

    def put(self, key: str, emb: torch.Tensor) -> None:
        """Store a copy of emb [n_tokens, hidden_size] (cache dtype and device) under `key`, replacing any
        entry of that key and evicting least-recently-used entries as needed. Raises EntryTooLargeError
        (changing nothing) when the entry needs more pages than the cache has."""
        key = _check_key(key)
        emb = self._check_entry(emb)
        with self._lock:
            self._order_streams()
            self._host.pop(key)
            self._insert_locked(key, emb)

    def erase(self, key: str) -> bool:
        """Remove `key` from both tiers; False if it was in neither."""
        with self._lock:
            on_device = self._index.erase(key)
            return self._host.pop(key) is not None or on_device

    def clear(self) -> None:
        """Drop every entry of both tiers (the counters stay)."""
        with self._lock:
            self._index.clear()
            self._host.clear()

    def keys(self) -> list[str]:
        """Device keys (most recently used first), then host-tier keys (most recently evicted first)."""
        with self._lock:
            return self._index.keys() + self._host.keys()

    def stats(self) -> dict[str, int]:
        """Counters and occupancy: hits, host_hits, misses, evictions, dropped, entries, host_entries,
        bytes_used (rows stored x row bytes), bytes_capacity, pages_used, pages_total, page_bytes, host_bytes,
        host_bytes_capacity."""
        with self._lock:
            s = self._index.stats()
            # The index counts a miss for every device miss; those served by the host tier are host hits.
            return {
                "hits": s["hits"],
                "misses": s["misses"] - self._host_hits,
                "evictions": s["evictions"],
                "entries": s["entries"],
                "bytes_used": s["rows_used"] * self.geometry.row_bytes,
                "pages_used": s["pages_used"],
                **self._common_stats(),
            }

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            return self._index.peek(key) is not None or key in self._host

    def __len__(self) -> int:
        with self._lock:
            return len(self._index) + len(self._host)

    # -- internals (called with self._lock held) ------------------------------------------------------------

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, plan: torch.Tensor, pad_value: float = 0.0) -> None:
        if plan.shape[0]:
            torch.ops.longrl.paged_copy_(dst, src, plan, pad_value)

    def _output(self, out: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        fresh = out is None
        out = super()._output(out, shape)
        if fresh and self.device.type == "cpu" and out.numel() * out.element_size() >= HUGE_PAGE_OUTPUT_BYTES:
            # Untouched memory: most of a large gather's time would go to 4 KiB page faults on first write.
            torch.ops.longrl.advise_huge_pages_(out)
        return out

    def _insert_locked(self, key: str, rows: torch.Tensor) -> None:
        """Reserve pages for `key` and scatter `rows` [n, hidden] (on the device) into them."""
        scatter, evicted = self._index.reserve(key, rows.shape[0])
        for evicted_key, evicted_rows, gather in evicted:  # before the scatter: it may reuse their pages
            self._spill_locked(evicted_key, evicted_rows, gather)
        try:
            self._copy(self._slab_rows, rows, scatter)
        except BaseException:
            self._index.erase(key)
            raise

    def _spill_locked(self, key: str, rows: int, gather: torch.Tensor) -> None:
        """Move an evicted entry (still intact in the slab) to the host tier, or drop it."""
        if not self._host.fits(rows * self.geometry.row_bytes):
            self._dropped += 1
            return
        held = self._host_buffer(rows)
        if self.device.type == "cpu":
            self._copy(held, self._slab_rows, gather)
        else:
            staged = torch.empty((rows, self.hidden_size), dtype=self.dtype, device=self.device)
            self._copy(staged, self._slab_rows, gather)
            held.copy_(staged, non_blocking=True)
        self._dropped += self._host.put(key, held)

    def _gather_locked(
        self,
        keys: Sequence[str],
        padded: bool,
        pad_value: float,
        pad_to_multiple: int | None,
        out: torch.Tensor | None,
        allow_missing: bool,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        lengths: list[int] = []
        from_host: list[tuple[int, str, torch.Tensor]] = []
        missing: list[str] = []
        for i, key in enumerate(keys):
            rows = self._index.lookup(key)
            if rows is None:
                held = self._host.get(key)
                if held is None:
                    missing.append(key)
                    rows = 0
                else:
                    self._host_hits += 1
                    from_host.append((i, key, held))
                    rows = held.shape[0]
            lengths.append(rows)
        if missing:
            if allow_missing:
                return None
            raise KeyError(f"EmbeddingCache: no entry for {missing}")
        shape, starts, width = self._layout(lengths, padded, pad_to_multiple)
        out = self._output(out, shape)
        out_rows = out.view(-1, self.hidden_size)
        self._order_streams()

        host_positions = {i for i, _, _ in from_host}
        on_device = [i for i in range(len(keys)) if i not in host_positions]
        plan = self._index.gather_plan([keys[i] for i in on_device], [starts[i] for i in on_device], width)
        self._copy(out_rows, self._slab_rows, plan, pad_value)
        for i, _, held in from_host:
            start, n = starts[i], lengths[i]
            out_rows[start : start + n].copy_(held, non_blocking=True)
            if n < width:
                out_rows[start + n : start + width].fill_(pad_value)
        if not padded and out_rows.shape[0] > sum(lengths):
            out_rows[sum(lengths) :].fill_(pad_value)

        # Host hits go back into the slab, from their rows in `out` (already on the device). The gather above
        # came first, so evictions these promotions cause cannot disturb it.
        promoted: set[str] = set()
        for i, key, _ in from_host:
            if key not in promoted:
                promoted.add(key)
                self._host.pop(key)
                self._insert_locked(key, out_rows[starts[i] : starts[i] + lengths[i]])
        return out, torch.tensor(lengths, dtype=torch.int64)


class ReferenceEmbeddingCache(_CacheBase):
    """The plain "dict of tensors" cache: same API and accounting as EmbeddingCache, no slab, no extension.

    Each entry is its own cloned tensor in an OrderedDict (least recently used first). Entries are charged
    whole pages of the same geometry as EmbeddingCache's (so both evict the same entries at the same time);
    the host tier behaves the same. Gathers copy entry by entry into the output.
    """

    backend = "torch"

    def __init__(
        self,
        capacity_bytes: int,
        *,
        hidden_size: int,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        page_rows: int | None = None,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        host_tier_bytes: int = 0,
    ) -> None:
        self._setup(capacity_bytes, hidden_size, dtype, device, page_rows, page_bytes, host_tier_bytes)
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pages_used = 0
        self._rows_used = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def put(self, key: str, emb: torch.Tensor) -> None:
        """As EmbeddingCache.put."""
        key = _check_key(key)
        emb = self._check_entry(emb)
        with self._lock:
            self._order_streams()
            self._host.pop(key)
            self._insert_locked(key, emb.clone())

    def erase(self, key: str) -> bool:
        """As EmbeddingCache.erase."""
        with self._lock:
            on_device = self._remove_locked(key) is not None
            return self._host.pop(key) is not None or on_device

    def clear(self) -> None:
        """As EmbeddingCache.clear."""
        with self._lock:
            self._entries.clear()
            self._pages_used = self._rows_used = 0
            self._host.clear()

    def keys(self) -> list[str]:
        """As EmbeddingCache.keys."""
        with self._lock:
            return list(reversed(self._entries)) + self._host.keys()

    def stats(self) -> dict[str, int]:
        """As EmbeddingCache.stats."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "entries": len(self._entries),
                "bytes_used": self._rows_used * self.geometry.row_bytes,
                "pages_used": self._pages_used,
                **self._common_stats(),
            }

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            return key in self._entries or key in self._host

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries) + len(self._host)

    # -- internals (called with self._lock held) ------------------------------------------------------------

    def _remove_locked(self, key: str) -> torch.Tensor | None:
        t = self._entries.pop(key, None)
        if t is not None:
            self._pages_used -= self.geometry.pages_for(t.shape[0])
            self._rows_used -= t.shape[0]
        return t

    def _insert_locked(self, key: str, t: torch.Tensor) -> None:
        """Store `t` (owned by the cache) as the most recent entry, evicting LRU entries to make room."""
        self._remove_locked(key)
        need = self.geometry.pages_for(t.shape[0])
        while self._pages_used + need > self.geometry.num_pages:
            old_key = next(iter(self._entries))
            old = self._remove_locked(old_key)
            self._evictions += 1
            if self._host.fits(old.numel() * old.element_size()):
                held = self._host_buffer(old.shape[0])
                held.copy_(old, non_blocking=True)
                _used_on_current_stream(old)
                self._dropped += self._host.put(old_key, held)
            else:
                self._dropped += 1
        self._entries[key] = t
        self._pages_used += need
        self._rows_used += t.shape[0]

    def _gather_locked(
        self,
        keys: Sequence[str],
        padded: bool,
        pad_value: float,
        pad_to_multiple: int | None,
        out: torch.Tensor | None,
        allow_missing: bool,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        parts: list[torch.Tensor] = []
        from_host: list[tuple[int, str]] = []
        missing: list[str] = []
        for i, key in enumerate(keys):
            t = self._entries.get(key)
            if t is not None:
                self._entries.move_to_end(key)
                self._hits += 1
            else:
                t = self._host.get(key)
                if t is None:
                    self._misses += 1
                    missing.append(key)
                    continue
                self._host_hits += 1
                from_host.append((i, key))
            parts.append(t)
        if missing:
            if allow_missing:
                return None
            raise KeyError(f"EmbeddingCache: no entry for {missing}")
        lengths = [t.shape[0] for t in parts]
        shape, starts, width = self._layout(lengths, padded, pad_to_multiple)
        out = self._output(out, shape)
        out_rows = out.view(-1, self.hidden_size)
        self._order_streams()
        for t, start in zip(parts, starts, strict=True):
            out_rows[start : start + t.shape[0]].copy_(t, non_blocking=True)
            _used_on_current_stream(t)
            if t.shape[0] < width:
                out_rows[start + t.shape[0] : start + width].fill_(pad_value)
        if not padded and out_rows.shape[0] > sum(lengths):
            out_rows[sum(lengths) :].fill_(pad_value)
        promoted: set[str] = set()
        for i, key in from_host:
            if key not in promoted:
                promoted.add(key)
                self._host.pop(key)
                self._insert_locked(key, out_rows[starts[i] : starts[i] + lengths[i]].clone())
        return out, torch.tensor(lengths, dtype=torch.int64)
