// CUDA kernels of longrl::pad_and_shard.out / shard_all.out / unshard.out / scatter_shard.out, a thin binding over
// csrc/cuda/pad_shard.cu. Schemas, the CPU kernels and the functional forms (shared by every device, they
// allocate and call these): csrc/cpu/pad_shard.cpp.
//
// The kernels read [outer, rows, row_bytes] contiguous bytes, so a non-contiguous input is made contiguous
// first (one extra copy for such inputs; the common case, a contiguous activation, pays nothing). Outputs are
// always contiguous. unshard takes at most kUnshardMaxShards ranks (pointers travel as kernel arguments).
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <vector>

#include "common/cuda_bind.h"
#include "common/pad_pattern.h"
#include "cpu/pad_shard_checks.h"
#include "cuda/pad_shard.h"

namespace longrl {

namespace {

// t (contiguous) as [outer, rows, row_bytes] around the sequence dim.
PadShardDims dims_for(const at::Tensor& t, const ShardGeometry& g) {
  int64_t outer = 1;
  int64_t inner = 1;
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i < g.dim) outer *= t.size(i);
    if (i > g.dim) inner *= t.size(i);
  }
  return PadShardDims{outer, inner * static_cast<int64_t>(t.element_size()), g.length, g.chunk, g.sp, g.layout};
}

void check_cuda(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": expected a CUDA tensor, got ", t.device());
}

at::Tensor shard_out_cuda(const char* op, const at::Tensor& x, int64_t dim, int64_t padded, int64_t sp_size,
                          int64_t rank_begin, int64_t rank_end, int64_t layout, const at::Scalar& pad_value,
                          at::Tensor out) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dim");
  check_cuda(op, x);
  const int64_t length = x.size(at::maybe_wrap_dim(dim, x.dim()));
  const ShardGeometry g = make_shard_geometry(op, x.dim(), dim, length, padded, sp_size, layout);
  check_out(op, out, x, resized_along(x, g.dim, (rank_end - rank_begin) * g.shard));
  const at::cuda::CUDAGuard guard(x.device());
  const at::Tensor src = x.contiguous();
  const std::array<uint8_t, 16> pad = pad_pattern(op, x.scalar_type(), pad_value);
  LONGRL_CUDA_CHECK(launch_pad_and_shard(out.data_ptr(), src.data_ptr(), dims_for(src, g), rank_begin, rank_end,
                                         pad.data(), current_stream(x)));
  return out;
}

at::Tensor pad_and_shard_out_cuda(const at::Tensor& x, int64_t dim, int64_t padded_length, int64_t sp_size,
                                  int64_t rank, int64_t layout, const at::Scalar& pad_value, at::Tensor out) {
  TORCH_CHECK(rank >= 0 && rank < sp_size, "pad_and_shard: rank must be in [0, ", sp_size, "), got ", rank);
  return shard_out_cuda("pad_and_shard", x, dim, padded_length, sp_size, rank, rank + 1, layout, pad_value, out);
}

at::Tensor shard_all_out_cuda(const at::Tensor& x, int64_t dim, int64_t padded_length, int64_t sp_size,
                              int64_t layout, const at::Scalar& pad_value, at::Tensor out) {
  return shard_out_cuda("shard_all", x, dim, padded_length, sp_size, 0, sp_size, layout, pad_value, out);
}

at::Tensor unshard_out_cuda(at::TensorList shards, int64_t dim, int64_t length, int64_t sp_size, int64_t layout,
                            at::Tensor out) {
  ShardGeometry g;
  const int64_t shard_len = check_shards("unshard", shards, dim, length, sp_size, layout, &g);
  check_cuda("unshard", shards[0]);
  check_out("unshard", out, shards[0], resized_along(shards[0], g.dim, length));
  for (const at::Tensor& s : shards) at::assert_no_overlap(out, s);
  TORCH_CHECK(sp_size <= kUnshardMaxShards, "unshard: CUDA supports sp_size <= ", kUnshardMaxShards);
  const at::cuda::CUDAGuard guard(out.device());
  std::vector<at::Tensor> srcs;
  srcs.reserve(shards.size());
  for (const at::Tensor& s : shards) srcs.push_back(s.contiguous());
  const PadShardDims d = dims_for(srcs[0], g);
  std::vector<const void*> ptrs(sp_size, nullptr);
  int64_t outer_rows = shard_len;
  if (srcs.size() == 1) {  // one tensor holding the shards back to back: rank r starts r * S rows in
    const char* base = static_cast<const char*>(srcs[0].data_ptr());
    for (int64_t r = 0; r < sp_size; ++r) ptrs[r] = base ? base + r * shard_len * d.row_bytes : nullptr;
    outer_rows = g.padded;
  } else {
    for (int64_t r = 0; r < sp_size; ++r) ptrs[r] = srcs[r].data_ptr();
  }
  LONGRL_CUDA_CHECK(launch_unshard(out.data_ptr(), ptrs.data(), outer_rows, d, nullptr, current_stream(out)));
  return out;
}

at::Tensor scatter_shard_out_cuda(const at::Tensor& shard, int64_t dim, int64_t length, int64_t sp_size, int64_t rank,
                                  int64_t layout, at::Tensor out) {
  TORCH_CHECK(shard.dim() >= 1, "scatter_shard: need a tensor with a dim");
  check_cuda("scatter_shard", shard);
  const int64_t d = at::maybe_wrap_dim(dim, shard.dim());
  const ShardGeometry g =
      make_shard_geometry("scatter_shard", shard.dim(), dim, length, shard.size(d) * sp_size, sp_size, layout);
  check_rank("scatter_shard", g, rank);
  check_out("scatter_shard", out, shard, resized_along(shard, g.dim, length));
  TORCH_CHECK(sp_size <= kUnshardMaxShards, "scatter_shard: CUDA supports sp_size <= ", kUnshardMaxShards);
  const at::cuda::CUDAGuard guard(shard.device());
  const at::Tensor src = shard.contiguous();
  std::vector<const void*> ptrs(sp_size, nullptr);  // the other ranks' chunks are filled with zeros
  ptrs[rank] = src.data_ptr();
  LONGRL_CUDA_CHECK(
      launch_unshard(out.data_ptr(), ptrs.data(), g.shard, dims_for(src, g), nullptr, current_stream(shard)));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(longrl, CUDA, m) {
  m.impl("pad_and_shard.out", &pad_and_shard_out_cuda);
  m.impl("shard_all.out", &shard_all_out_cuda);
  m.impl("unshard.out", &unshard_out_cuda);
  m.impl("scatter_shard.out", &scatter_shard_out_cuda);
}

}  // namespace longrl
