// paged_copy_: the data half of longrl's EmbeddingCache. Schema for the `longrl` torch library + CPU kernel.
//   dst [dst_rows, hidden] and src [src_rows, hidden]: contiguous, same dtype and device;
//   segments int64 CPU [S, 3] of (dst_row, src_row, rows): rows src[src_row : src_row+rows] are copied to
//   dst[dst_row : dst_row+rows]; src_row == -1 fills those dst rows with pad_value (converted to dst's dtype).
// The cache's slab [num_pages, page_rows, hidden] is passed as [num_pages * page_rows, hidden]: a scatter is
// paged_copy_(slab, entry, plan), a gather paged_copy_(out, slab, plan). Every segment is one contiguous byte
// range on both sides (a page's rows are contiguous, an entry's rows are contiguous), so the kernel is a
// batched memcpy; the element type only matters for the pad value.
//
// Why the copy loops below instead of one std::memcpy per segment: a segment is a page, ~1 MiB by default,
// and glibc's memcpy copies sizes between ~2 KiB and the L2 size (1 MiB on the AMD EPYC CPUs we run on) with
// `rep movsb`, which there runs at half the speed of a vector loop and is slower still when the destination
// is freshly allocated (every page fault restarts it). Measured on 53 segments of 1 MiB - 7 KiB (55 MB):
// 5.1 ms with memcpy vs 4.1 ms with the plain loop and 3.4 ms with streaming stores, 1 thread, warm buffers.
//
// advise_huge_pages_(t): asks Linux to back the not-yet-touched pages of a fresh CPU tensor with transparent
// huge pages (madvise(MADV_HUGEPAGE) on the huge-page-aligned part of its bytes). A gather into a fresh
// 55 MB result otherwise spends ~3/4 of its time in ~13.5k page faults of 4 KiB (26 of 31 ms, 1 thread);
// with 2 MiB pages that is 27 faults (8.5 ms in all). A hint only: a no-op where THP is off or unknown.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/pad_pattern.h"
#include "cpu/embedding_cache_checks.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>

#include <fstream>
#endif

namespace longrl {

namespace {

// One call writing at least this many bytes uses non-temporal (streaming) stores where the CPU has them:
// such a batch is far larger than a core's L2, so its reader gets it from memory either way, and streaming
// stores skip reading every destination line into the cache first (~25% faster at 55 MB). Below it the
// result may still be in cache when it is read, so plain stores keep it there.
constexpr int64_t kStreamBytes = int64_t{8} << 20;

// Step of the plain loops: a fixed-size memcpy, which the compiler inlines as vector moves (no rep movsb).
constexpr size_t kBlock = 256;

// A kBlock-byte run of the 16-byte pad pattern; since 16 divides kBlock, every 16-byte-aligned offset of it
// starts the pattern over (pad runs are written from phase 0 at their first byte).
struct PadBlock {
  alignas(64) uint8_t bytes[kBlock];
};

void copy_plain(char* d, const char* s, size_t n) {
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) std::memcpy(d + i, s + i, kBlock);
  std::memcpy(d + i, s + i, n - i);  // under kBlock bytes: the short-copy path of memcpy
}

void fill_plain(char* d, const PadBlock& pad, size_t n) {
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) std::memcpy(d + i, pad.bytes, kBlock);
  std::memcpy(d + i, pad.bytes, n - i);
}

#if defined(__SSE2__)
constexpr bool kHaveStreamingStores = true;

// Bytes to write before d is 16-byte aligned (streaming stores need aligned addresses).
size_t misalignment(const char* d, size_t n) {
  return std::min(n, (16 - reinterpret_cast<uintptr_t>(d) % 16) % 16);
}

void copy_stream(char* d, const char* s, size_t n) {
  const size_t head = misalignment(d, n);
  std::memcpy(d, s, head);
  d += head, s += head, n -= head;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  std::memcpy(d + i, s + i, n - i);
}

void fill_stream(char* d, const PadBlock& pad, size_t n) {
  const size_t head = misalignment(d, n);
  std::memcpy(d, pad.bytes, head);
  // From the aligned address on, the pattern continues at phase `head`.
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pad.bytes + head));
  d += head, n -= head;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (size_t k = 0; k < 64; k += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + k), v);
  }
  std::memcpy(d + i, pad.bytes + head, n - i);  // head + (n - i) < 16 + 64 <= kBlock; i % 16 == 0
}

// Streaming stores are weakly ordered: each thread fences its own before the parallel region ends, so a
// reader after paged_copy_ returns sees them.
void fence_streams() { _mm_sfence(); }
#else
constexpr bool kHaveStreamingStores = false;
void copy_stream(char* d, const char* s, size_t n) { copy_plain(d, s, n); }
void fill_stream(char* d, const PadBlock& pad, size_t n) { fill_plain(d, pad, n); }
void fence_streams() {}
#endif

void paged_copy_cpu(at::Tensor dst, const at::Tensor& src, const at::Tensor& segments, double pad_value) {
  const int64_t max_rows = check_paged_copy_args(dst, src, segments);
  const int64_t num_segments = segments.size(0);
  if (num_segments == 0 || max_rows == 0) return;
  const int64_t row_bytes = dst.size(1) * dst.element_size();
  const int64_t* seg = segments.data_ptr<int64_t>();
  char* out = static_cast<char*>(dst.data_ptr());
  const char* in = static_cast<const char*>(src.data_ptr());

  int64_t total_rows = 0;
  bool has_pad = false;
  for (int64_t s = 0; s < num_segments; ++s) {
    total_rows += seg[3 * s + 2];
    has_pad = has_pad || seg[3 * s + 1] == -1;
  }
  const bool stream = kHaveStreamingStores && total_rows * row_bytes >= kStreamBytes;

  // Element sizes divide 16 and pad runs are whole rows, so byte i of a pad run is pattern[i % 16].
  PadBlock pad{};
  if (has_pad) {
    const auto pattern = pad_pattern("paged_copy_", dst.scalar_type(), pad_value);
    for (size_t i = 0; i < kBlock; ++i) pad.bytes[i] = pattern[i % 16];
  }

  // Segments are pages (at most page_rows rows) or pad runs; give each thread ~256 KiB of copying at least.
  // at::parallel_for only spreads work over threads where this file is compiled with OpenMP (-fopenmp, as
  // torch is); without it (ATen's INTRA_OP_PARALLEL undefined) it runs the whole range on this thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{256} << 10) / std::max<int64_t>(1, max_rows * row_bytes));
  at::parallel_for(0, num_segments, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t dst_row = seg[3 * s], src_row = seg[3 * s + 1], rows = seg[3 * s + 2];
      char* d = out + dst_row * row_bytes;
      const size_t n = static_cast<size_t>(rows * row_bytes);
      if (src_row >= 0) {
        stream ? copy_stream(d, in + src_row * row_bytes, n) : copy_plain(d, in + src_row * row_bytes, n);
      } else {
        stream ? fill_stream(d, pad, n) : fill_plain(d, pad, n);
      }
    }
    if (stream) fence_streams();
  });
}

// Size of a transparent huge page (the PMD size), or 0 where the kernel does not say (no THP support).
int64_t huge_page_bytes() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const int64_t bytes = [] {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    int64_t v = 0;
    return (f >> v) && v > 0 ? v : int64_t{0};
  }();
  return bytes;
#else
  return 0;
#endif
}

void advise_huge_pages_cpu(at::Tensor t) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "advise_huge_pages_: t must be a contiguous CPU tensor");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto huge = static_cast<uintptr_t>(huge_page_bytes());
  if (huge == 0 || t.nbytes() == 0) return;
  const auto start = reinterpret_cast<uintptr_t>(t.data_ptr());
  // Only whole huge pages inside t: the bytes around it belong to other allocations.
  const uintptr_t begin = (start + huge - 1) / huge * huge;
  const uintptr_t end = (start + t.nbytes()) / huge * huge;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors ignored
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longrl, m) {
  m.def("paged_copy_(Tensor(a!) dst, Tensor src, Tensor segments, float pad_value=0.0) -> ()");
  m.def("advise_huge_pages_(Tensor(a!) t) -> ()");
}

TORCH_LIBRARY_IMPL(longrl, CPU, m) {
  m.impl("paged_copy_", [](at::Tensor dst, const at::Tensor& src, const at::Tensor& segments, double pad_value) {
    paged_copy_cpu(dst, src, segments, pad_value);
  });
  m.impl("advise_huge_pages_", &advise_huge_pages_cpu);
}

}  // namespace longrl
