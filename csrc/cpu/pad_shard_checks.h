// pad_and_shard / unshard: geometry and argument checks shared by the CPU ops and the CUDA binding.
//
// One sequence dim of length L is padded at its end to P (a multiple of the chunk count n) and cut into n
// chunks of C = P / n positions. layout 0 "contiguous": n = sp, rank r holds chunk r. layout 1 "zigzag":
// n = 2*sp, rank r holds chunks r and 2*sp-1-r in that order ("slots" 0 and 1 of its shard of S = P / sp).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/WrapDimUtils.h>

#include <utility>
#include <vector>

namespace longrl {

struct ShardGeometry {
  int64_t dim = 0;       // the sequence dim (wrapped, non-negative)
  int64_t length = 0;    // L
  int64_t padded = 0;    // P
  int64_t chunk = 0;     // C
  int64_t shard = 0;     // S
  int64_t sp = 1;        // ranks
  int64_t per_rank = 1;  // chunks per rank: 1 contiguous, 2 zigzag
  int64_t layout = 0;

  int64_t n_chunks() const { return sp * per_rank; }
  // Chunk held in `slot` of rank `rank`'s shard.
  int64_t chunk_of(int64_t rank, int64_t slot) const { return slot == 0 ? rank : 2 * sp - 1 - rank; }
  // (rank, slot) holding chunk `c`.
  std::pair<int64_t, int64_t> owner_of(int64_t c) const {
    return (layout == 1 && c >= sp) ? std::make_pair(2 * sp - 1 - c, int64_t{1}) : std::make_pair(c, int64_t{0});
  }
  // Valid (non-padding) positions of chunk `c`: the rest of it is padding.
  int64_t valid_rows(int64_t c) const { return std::min(std::max<int64_t>(length - c * chunk, 0), chunk); }
};

inline ShardGeometry make_shard_geometry(const char* op, int64_t ndim, int64_t dim, int64_t length, int64_t padded,
                                         int64_t sp_size, int64_t layout) {
  TORCH_CHECK(ndim >= 1, op, ": tensor must have at least one dim");
  TORCH_CHECK(layout == 0 || layout == 1, op, ": layout must be 0 (contiguous) or 1 (zigzag), got ", layout);
  TORCH_CHECK(sp_size >= 1, op, ": sp_size must be >= 1, got ", sp_size);
  ShardGeometry g;
  g.dim = at::maybe_wrap_dim(dim, ndim);
  g.layout = layout;
  g.sp = sp_size;
  g.per_rank = layout == 1 ? 2 : 1;
  g.length = length;
  g.padded = padded;
  TORCH_CHECK(length >= 0 && padded >= length && padded % g.n_chunks() == 0, op, ": padded_length ", padded,
              " must be >= length ", length, " and a multiple of ", g.n_chunks(), " chunks");
  g.chunk = padded / g.n_chunks();
  g.shard = padded / sp_size;
  return g;
}

inline void check_rank(const char* op, const ShardGeometry& g, int64_t rank) {
  TORCH_CHECK(rank >= 0 && rank < g.sp, op, ": rank must be in [0, ", g.sp, "), got ", rank);
}

// The shape of `t` with `size` positions along the sequence dim.
inline std::vector<int64_t> resized_along(const at::Tensor& t, int64_t dim, int64_t size) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape[dim] = size;
  return shape;
}

// An out= tensor must be exactly what the functional op would allocate, and must not alias an input.
inline void check_out(const char* op, const at::Tensor& out, const at::Tensor& like, at::IntArrayRef shape) {
  TORCH_CHECK(out.sizes() == shape, op, ": out has shape ", out.sizes(), ", expected ", shape);
  TORCH_CHECK(out.scalar_type() == like.scalar_type(), op, ": out dtype ", out.scalar_type(), " != ",
              like.scalar_type());
  TORCH_CHECK(out.device() == like.device(), op, ": out must be on ", like.device());
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  at::assert_no_overlap(out, like);
}

// Shards for unshard: either sp_size tensors (rank order) of S positions each, or one tensor of P positions
// (the shards concatenated in rank order). Returns S and checks the others against the first.
inline int64_t check_shards(const char* op, at::TensorList shards, int64_t dim, int64_t length, int64_t sp_size,
                            int64_t layout, ShardGeometry* g_out) {
  TORCH_CHECK(!shards.empty(), op, ": no shards given");
  const at::Tensor& first = shards[0];
  const int64_t d = at::maybe_wrap_dim(dim, first.dim());
  int64_t shard_len = 0;
  if (shards.size() == 1) {
    TORCH_CHECK(first.size(d) % sp_size == 0, op, ": concatenated shards have ", first.size(d),
                " positions, not a multiple of sp_size ", sp_size);
    shard_len = first.size(d) / sp_size;
  } else {
    TORCH_CHECK(static_cast<int64_t>(shards.size()) == sp_size, op, ": got ", shards.size(), " shards for sp_size ",
                sp_size);
    shard_len = first.size(d);
    for (const at::Tensor& s : shards) {
      TORCH_CHECK(s.sizes() == first.sizes() && s.scalar_type() == first.scalar_type() &&
                      s.device() == first.device(),
                  op, ": shards must share shape, dtype and device");
    }
  }
  *g_out = make_shard_geometry(op, first.dim(), dim, length, shard_len * sp_size, sp_size, layout);
  return shard_len;
}

}  // namespace longrl
