// paged_copy_: the data half of longrl's EmbeddingCache. Schema for the `longrl` torch library + CPU kernel.
//   dst [dst_rows, hidden] and src [src_rows, hidden]: contiguous, same dtype and device;
//   segments int64 CPU [S, 3] of (dst_row, src_row, rows): rows src[src_row : src_row+rows] are copied to
//   dst[dst_row : dst_row+rows]; src_row == -1 fills those dst rows with pad_value (converted to dst's dtype).
// The cache's slab [num_pages, page_rows, hidden] is passed as [num_pages * page_rows, hidden]: a scatter is
// paged_copy_(slab, entry, plan), a gather paged_copy_(out, slab, plan). Every segment is one contiguous byte
// range on both sides (a page's rows are contiguous, an entry's rows are contiguous), so the kernel is a
// batched memcpy; the element type only matters for the pad value.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "cpu/embedding_cache_checks.h"

namespace longrl {

namespace {

void paged_copy_cpu(at::Tensor dst, const at::Tensor& src, const at::Tensor& segments, double pad_value) {
  const int64_t max_rows = check_paged_copy_args(dst, src, segments);
  const int64_t num_segments = segments.size(0);
  if (num_segments == 0 || max_rows == 0) return;
  const int64_t row_bytes = dst.size(1) * dst.element_size();
  const int64_t* seg = segments.data_ptr<int64_t>();
  char* out = static_cast<char*>(dst.data_ptr());
  const char* in = static_cast<const char*>(src.data_ptr());

  // One row of pad values, copied into every pad row (16 % element_size == 0, so byte i is pattern[i % 16]).
  std::vector<char> pad_row;
  for (int64_t s = 0; s < num_segments && pad_row.empty(); ++s) {
    if (seg[3 * s + 1] == -1) {
      const auto pattern = pad_pattern(dst.scalar_type(), pad_value);
      pad_row.resize(row_bytes);
      for (int64_t i = 0; i < row_bytes; ++i) pad_row[i] = static_cast<char>(pattern[i % 16]);
    }
  }

  // Segments are pages (at most page_rows rows) or pad runs; give each thread ~256 KiB of copying at least.
  const int64_t grain = std::max<int64_t>(1, (int64_t{256} << 10) / std::max<int64_t>(1, max_rows * row_bytes));
  at::parallel_for(0, num_segments, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t dst_row = seg[3 * s], src_row = seg[3 * s + 1], rows = seg[3 * s + 2];
      char* d = out + dst_row * row_bytes;
      if (src_row >= 0) {
        std::memcpy(d, in + src_row * row_bytes, static_cast<size_t>(rows * row_bytes));
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(d + r * row_bytes, pad_row.data(), static_cast<size_t>(row_bytes));
        }
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longrl, m) {
  m.def("paged_copy_(Tensor(a!) dst, Tensor src, Tensor segments, float pad_value=0.0) -> ()");
}

TORCH_LIBRARY_IMPL(longrl, CPU, m) {
  m.impl("paged_copy_", [](at::Tensor dst, const at::Tensor& src, const at::Tensor& segments, double pad_value) {
    paged_copy_cpu(dst, src, segments, pad_value);
  });
}

}  // namespace longrl
