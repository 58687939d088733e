// EmbeddingCacheIndex (see embedding_cache_index.h) and its Python binding longrl._C.EmbeddingCacheIndex.
#include "cpu/embedding_cache_index.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "common/py_binders.h"

namespace longrl {

EmbeddingCacheIndex::EmbeddingCacheIndex(int64_t num_pages, int64_t page_rows)
    : num_pages_(num_pages), page_rows_(page_rows) {
  if (num_pages < 1 || page_rows < 1) {
    throw std::invalid_argument("EmbeddingCacheIndex: need num_pages >= 1 and page_rows >= 1, got " +
                                std::to_string(num_pages) + " and " + std::to_string(page_rows));
  }
  if (num_pages > INT32_MAX) throw std::invalid_argument("EmbeddingCacheIndex: too many pages");
  free_.reserve(num_pages);
  // Reverse order so page 0 is handed out first: a fresh cache fills the slab front to back.
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

void EmbeddingCacheIndex::append_entry_segments(const Entry& e, int64_t entry_row0, bool to_slab,
                                                std::vector<CopySegment>& out) const {
  for (size_t j = 0; j < e.pages.size(); ++j) {
    const int64_t entry_row = static_cast<int64_t>(j) * page_rows_;
    const int64_t rows = std::min(page_rows_, e.rows - entry_row);
    const int64_t slab_row = static_cast<int64_t>(e.pages[j]) * page_rows_;
    if (to_slab) {
      out.push_back({slab_row, entry_row0 + entry_row, rows});
    } else {
      out.push_back({entry_row0 + entry_row, slab_row, rows});
    }
  }
}

void EmbeddingCacheIndex::release_locked(std::unordered_map<std::string, Entry>::iterator it) {
  const Entry& e = it->second;
  // Pushed in reverse so the entry's first page is handed out first again (keeps reused runs in order).
  for (auto p = e.pages.rbegin(); p != e.pages.rend(); ++p) free_.push_back(*p);
  rows_used_ -= e.rows;
  lru_.erase(e.lru_pos);
  entries_.erase(it);
}

Reservation EmbeddingCacheIndex::reserve(const std::string& key, int64_t rows) {
  if (rows < 1) {
    throw std::invalid_argument("EmbeddingCache: an entry needs at least one row, got " + std::to_string(rows));
  }
  const int64_t need = pages_for(rows);
  if (need > num_pages_) {
    throw std::invalid_argument("EmbeddingCache: entry '" + key + "' has " + std::to_string(rows) + " rows = " +
                                std::to_string(need) + " pages of " + std::to_string(page_rows_) +
                                " rows, but the whole cache has " + std::to_string(num_pages_) +
                                " pages; raise capacity_bytes");
  }
  std::lock_guard<std::mutex> lock(mu_);
  Reservation r;
  auto old = entries_.find(key);
  if (old != entries_.end()) release_locked(old);
  while (static_cast<int64_t>(free_.size()) < need) {
    auto victim = entries_.find(lru_.back());
    EvictedEntry ev{victim->first, victim->second.rows, {}};
    append_entry_segments(victim->second, 0, /*to_slab=*/false, ev.gather);
    release_locked(victim);
    ++evictions_;
    r.evicted.push_back(std::move(ev));
  }
  Entry e;
  e.rows = rows;
  e.pages.reserve(need);
  for (int64_t j = 0; j < need; ++j) {
    e.pages.push_back(free_.back());
    free_.pop_back();
  }
  lru_.push_front(key);
  e.lru_pos = lru_.begin();
  append_entry_segments(e, 0, /*to_slab=*/true, r.scatter);
  rows_used_ += rows;
  entries_.emplace(key, std::move(e));
  return r;
}

std::optional<int64_t> EmbeddingCacheIndex::lookup(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  lru_.splice(lru_.begin(), lru_, it->second.lru_pos);  // iterators stay valid
  return it->second.rows;
}

std::optional<int64_t> EmbeddingCacheIndex::peek(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second.rows;
}

bool EmbeddingCacheIndex::erase(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  release_locked(it);
  return true;
}

void EmbeddingCacheIndex::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  while (!entries_.empty()) release_locked(entries_.find(lru_.back()));
}

std::vector<CopySegment> EmbeddingCacheIndex::gather_plan(const std::vector<std::string>& keys,
                                                          const std::vector<int64_t>& dst_starts,
                                                          int64_t pad_to) const {
  if (keys.size() != dst_starts.size()) {
    throw std::invalid_argument("gather_plan: keys and dst_starts must have the same length");
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CopySegment> plan;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = entries_.find(keys[i]);
    if (it == entries_.end()) throw std::out_of_range("EmbeddingCache: no entry '" + keys[i] + "'");
    const Entry& e = it->second;
    if (pad_to > 0 && e.rows > pad_to) {
      throw std::invalid_argument("gather_plan: entry '" + keys[i] + "' has " + std::to_string(e.rows) +
                                  " rows, more than pad_to=" + std::to_string(pad_to));
    }
    append_entry_segments(e, dst_starts[i], /*to_slab=*/false, plan);
    if (pad_to > e.rows) plan.push_back({dst_starts[i] + e.rows, -1, pad_to - e.rows});
  }
  return plan;
}

std::vector<int32_t> EmbeddingCacheIndex::pages(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  return it == entries_.end() ? std::vector<int32_t>{} : it->second.pages;
}

std::vector<std::string> EmbeddingCacheIndex::keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {lru_.begin(), lru_.end()};
}

int64_t EmbeddingCacheIndex::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t EmbeddingCacheIndex::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(entries_.size());
}

IndexStats EmbeddingCacheIndex::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  IndexStats s;
  s.hits = hits_;
  s.misses = misses_;
  s.evictions = evictions_;
  s.entries = static_cast<int64_t>(entries_.size());
  s.rows_used = rows_used_;
  s.pages_total = num_pages_;
  s.pages_used = num_pages_ - static_cast<int64_t>(free_.size());
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Python binding
// ---------------------------------------------------------------------------------------------------------

namespace {

namespace py = pybind11;

// A plan as an int64 CPU tensor [S, 3] of (dst_row, src_row, rows): the form longrl::paged_copy_ takes.
at::Tensor plan_tensor(const std::vector<CopySegment>& plan) {
  at::Tensor t = at::empty({static_cast<int64_t>(plan.size()), 3}, at::kLong);
  if (!plan.empty()) std::memcpy(t.data_ptr<int64_t>(), plan.data(), plan.size() * sizeof(CopySegment));
  return t;
}

void bind_embedding_cache_index(py::module_& m) {
  py::class_<EmbeddingCacheIndex>(m, "EmbeddingCacheIndex",
                                  "Key -> pages index of the paged EmbeddingCache (LRU, free-page list, counters). "
                                  "Thread-safe; copies nothing itself: it returns copy plans for paged_copy_.")
      .def(py::init<int64_t, int64_t>(), py::arg("num_pages"), py::arg("page_rows"))
      .def_property_readonly("num_pages", &EmbeddingCacheIndex::num_pages)
      .def_property_readonly("page_rows", &EmbeddingCacheIndex::page_rows)
      .def_property_readonly("free_pages", &EmbeddingCacheIndex::free_pages)
      .def(
          "reserve",
          [](EmbeddingCacheIndex& self, const std::string& key, int64_t rows) {
            Reservation r = self.reserve(key, rows);
            py::list evicted;
            for (const EvictedEntry& e : r.evicted) {
              evicted.append(py::make_tuple(e.key, e.rows, plan_tensor(e.gather)));
            }
            return py::make_tuple(plan_tensor(r.scatter), evicted);
          },
          py::arg("key"), py::arg("rows"),
          "Pages for a new entry -> (scatter plan [S,3], [(evicted_key, rows, gather plan [S,3]), ...]). Run the "
          "evicted gathers before the scatter. ValueError if the entry can never fit.")
      .def("lookup", &EmbeddingCacheIndex::lookup, py::arg("key"),
           "Rows of the entry or None; counts a hit/miss and marks it most recently used.")
      .def("peek", &EmbeddingCacheIndex::peek, py::arg("key"), "Rows of the entry or None; no counting, no LRU update.")
      .def("erase", &EmbeddingCacheIndex::erase, py::arg("key"))
      .def("clear", &EmbeddingCacheIndex::clear)
      .def(
          "gather_plan",
          [](const EmbeddingCacheIndex& self, const std::vector<std::string>& keys,
             const std::vector<int64_t>& dst_starts, int64_t pad_to) {
            try {
              return plan_tensor(self.gather_plan(keys, dst_starts, pad_to));
            } catch (const std::out_of_range& e) {
              throw py::key_error(e.what());
            }
          },
          py::arg("keys"), py::arg("dst_starts"), py::arg("pad_to") = 0,
          "Plan [S,3] gathering keys[i] to rows dst_starts[i]..; with pad_to > 0 pads each to pad_to rows.")
      .def("pages", &EmbeddingCacheIndex::pages, py::arg("key"))
      .def("keys", &EmbeddingCacheIndex::keys, "Keys, most recently used first.")
      .def("__len__", &EmbeddingCacheIndex::size)
      .def("__contains__",
           [](const EmbeddingCacheIndex& self, const std::string& key) { return self.peek(key).has_value(); })
      .def("stats", [](const EmbeddingCacheIndex& self) {
        const IndexStats s = self.stats();
        py::dict d;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        d["evictions"] = s.evictions;
        d["entries"] = s.entries;
        d["rows_used"] = s.rows_used;
        d["pages_used"] = s.pages_used;
        d["pages_total"] = s.pages_total;
        return d;
      });
}

}  // namespace

LONGRL_REGISTER_PY_BINDER(bind_embedding_cache_index);

}  // namespace longrl
