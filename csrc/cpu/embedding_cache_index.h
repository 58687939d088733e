// EmbeddingCacheIndex: the bookkeeping half of longrl's EmbeddingCache (no tensors, no torch here).
//
// The cache stores entries of `rows` rows each in a slab of `num_pages` fixed pages of `page_rows` rows.
// The index maps a string key to the pages holding its rows (page j holds rows [j*page_rows, ...) of the
// entry), keeps the least-recently-used order, the free-page list and hit/miss/eviction counters. Because
// every page has the same size, any free pages serve any new entry: there is no fragmentation, an entry
// needing k pages fits whenever k pages are free.
//
// The index hands out copy plans (lists of CopySegment) instead of touching data; the caller runs them with
// longrl::paged_copy_. Every method takes one std::mutex, so the index itself is thread-safe. A caller that
// copies data must still keep a reserve/lookup and its copies atomic (the Python EmbeddingCache holds one
// lock around both): otherwise a concurrent reserve could evict and reuse pages a copy is still reading.
#pragma once
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace longrl {

// One copy instruction: rows [src_row, src_row + rows) of the source go to rows [dst_row, dst_row + rows) of
// the destination (both seen as [total_rows, hidden] row-major). src_row == -1 fills with the pad value.
struct CopySegment {
  int64_t dst_row;
  int64_t src_row;
  int64_t rows;
};
static_assert(sizeof(CopySegment) == 3 * sizeof(int64_t), "CopySegment must be three packed int64");

// An entry pushed out of the slab by a reservation, with the plan that copies its rows (still intact in the
// slab until the reservation's own scatter runs) into a [rows, hidden] buffer.
struct EvictedEntry {
  std::string key;
  int64_t rows;
  std::vector<CopySegment> gather;
};

// What reserve() returns. Run every evicted entry's gather before `scatter`: the new entry may reuse their
// pages.
struct Reservation {
  std::vector<CopySegment> scatter;   // entry rows -> slab rows (slab seen as [num_pages * page_rows, hidden])
  std::vector<EvictedEntry> evicted;  // least recently used first
};

struct IndexStats {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t evictions = 0;
  int64_t entries = 0;
  int64_t rows_used = 0;
  int64_t pages_used = 0;
  int64_t pages_total = 0;
};

class EmbeddingCacheIndex {
 public:
  // num_pages >= 1 pages of page_rows >= 1 rows each; throws std::invalid_argument otherwise.
  EmbeddingCacheIndex(int64_t num_pages, int64_t page_rows);

  int64_t num_pages() const { return num_pages_; }
  int64_t page_rows() const { return page_rows_; }
  // Pages an entry of `rows` rows occupies: ceil(rows / page_rows).
  int64_t pages_for(int64_t rows) const { return (rows + page_rows_ - 1) / page_rows_; }

  // Allocates pages for `key` (replacing an existing entry of that key, which is not an eviction), evicting
  // least-recently-used entries until enough pages are free; the new entry becomes the most recent.
  // Throws std::invalid_argument (and changes nothing) when rows < 1 or the entry needs more pages than the
  // whole slab has.
  Reservation reserve(const std::string& key, int64_t rows);

  // Number of rows of `key` or nullopt; counts a hit or a miss and marks the entry most recently used.
  std::optional<int64_t> lookup(const std::string& key);
  // Like lookup without counting and without touching the LRU order.
  std::optional<int64_t> peek(const std::string& key) const;

  // Removes `key` and frees its pages (not counted as an eviction). False when absent.
  bool erase(const std::string& key);
  // Removes every entry; the counters are kept.
  void clear();

  // Plan that gathers keys[i] to destination rows starting at dst_starts[i]. With pad_to > 0, the rows from
  // an entry's end up to dst_starts[i] + pad_to are filled with the pad value (one extra segment), so a
  // padded [N, pad_to, hidden] batch is fully written. Throws std::out_of_range for a missing key and
  // std::invalid_argument for an entry longer than pad_to or mismatched list lengths.
  std::vector<CopySegment> gather_plan(const std::vector<std::string>& keys, const std::vector<int64_t>& dst_starts,
                                       int64_t pad_to) const;

  std::vector<int32_t> pages(const std::string& key) const;  // empty when absent
  std::vector<std::string> keys() const;                     // most recently used first
  int64_t free_pages() const;
  int64_t size() const;
  IndexStats stats() const;

 private:
  struct Entry {
    std::vector<int32_t> pages;
    int64_t rows;
    std::list<std::string>::iterator lru_pos;  // position in lru_ (front = most recent)
  };

  void append_entry_segments(const Entry& e, int64_t entry_row0, bool to_slab, std::vector<CopySegment>& out) const;
  void release_locked(std::unordered_map<std::string, Entry>::iterator it);

  const int64_t num_pages_;
  const int64_t page_rows_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;
  std::vector<int32_t> free_;  // stack: the back is handed out next
  int64_t rows_used_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  int64_t evictions_ = 0;
};

}  // namespace longrl
