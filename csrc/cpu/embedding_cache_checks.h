// Argument checks shared by the CPU and CUDA implementations of longrl::paged_copy_.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace longrl {

// Checks dst/src/segments and every segment's bounds (segments live on the CPU, so this is cheap).
// Returns the largest segment length in rows (the CUDA launcher sizes its grid with it).
inline int64_t check_paged_copy_args(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& segments) {
  TORCH_CHECK(dst.dim() == 2 && src.dim() == 2, "paged_copy_: dst and src must be 2-D [rows, hidden], got ",
              dst.sizes(), " and ", src.sizes());
  TORCH_CHECK(dst.scalar_type() == src.scalar_type(), "paged_copy_: dst is ", dst.scalar_type(), " but src is ",
              src.scalar_type());
  TORCH_CHECK(dst.size(1) == src.size(1), "paged_copy_: hidden sizes differ (", dst.size(1), " vs ", src.size(1), ")");
  TORCH_CHECK(dst.is_contiguous() && src.is_contiguous(), "paged_copy_: dst and src must be contiguous");
  TORCH_CHECK(dst.device() == src.device(), "paged_copy_: dst and src must be on one device");
  TORCH_CHECK(16 % dst.element_size() == 0, "paged_copy_: unsupported element size ", dst.element_size());
  TORCH_CHECK(segments.device().is_cpu() && segments.scalar_type() == at::kLong && segments.dim() == 2 &&
                  segments.size(1) == 3 && segments.is_contiguous(),
              "paged_copy_: segments must be a contiguous int64 CPU tensor [S, 3] of (dst_row, src_row, rows)");
  const int64_t* seg = segments.data_ptr<int64_t>();
  const int64_t dst_rows = dst.size(0);
  const int64_t src_rows = src.size(0);
  int64_t max_rows = 0;
  for (int64_t s = 0; s < segments.size(0); ++s) {
    const int64_t d = seg[3 * s], r = seg[3 * s + 1], n = seg[3 * s + 2];
    TORCH_CHECK(n >= 0 && d >= 0 && d <= dst_rows - n, "paged_copy_: segment ", s, " (dst_row=", d, ", rows=", n,
                ") is outside dst's ", dst_rows, " rows");
    TORCH_CHECK(r == -1 || (r >= 0 && r <= src_rows - n), "paged_copy_: segment ", s, " (src_row=", r, ", rows=", n,
                ") is outside src's ", src_rows, " rows");
    max_rows = std::max(max_rows, n);
  }
  return max_rows;
}

}  // namespace longrl
