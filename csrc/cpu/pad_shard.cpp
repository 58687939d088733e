// pad_and_shard / unshard: fused padding + sequence-parallel sharding and its inverse.
// Schemas for the `longrl` torch library, the functional forms (one for every device) and the CPU .out kernels
// (layout 0 contiguous, 1 zigzag; see pad_shard_checks.h for the geometry). Every op allocates (or takes, .out)
// its contiguous output and writes each output position exactly once: a copy of a valid source range, or the
// fill value. No padded full-size intermediate exists.
//
// CPU strategy: a short plan of row ranges along the sequence dim (at most 2 per rank, merged when adjacent),
// each executed as one ATen narrow().copy_() / fill_() over all leading and trailing dims at once. copy_ is
// TensorIterator: it handles every dtype and any input strides, vectorizes and runs in parallel, so a
// hand-written loop would only re-implement it (measured in longrl/bench/kernels_pad_shard.py).
#include <torch/library.h>

#include <vector>

#include "cpu/pad_shard_checks.h"

namespace longrl {

namespace {

// Rows [out_start, out_start + rows) of the output along the sequence dim come from rows
// [src_start, src_start + rows) of sources[src], or are filled with the fill value when src < 0.
struct RowRange {
  int64_t out_start;
  int64_t src;
  int64_t src_start;
  int64_t rows;
};

class Plan {
 public:
  void copy(int64_t out_start, int64_t src, int64_t src_start, int64_t rows) { add({out_start, src, src_start, rows}); }
  void fill(int64_t out_start, int64_t rows) { add({out_start, -1, 0, rows}); }

  void run(at::Tensor& out, const std::vector<at::Tensor>& sources, int64_t dim, const at::Scalar& fill_value) const {
    for (const RowRange& r : ranges_) {
      at::Tensor dst = out.narrow(dim, r.out_start, r.rows);
      if (r.src < 0) {
        dst.fill_(fill_value);
      } else {
        dst.copy_(sources[r.src].narrow(dim, r.src_start, r.rows));
      }
    }
  }

 private:
  // Adjacent ranges that continue each other (same source, both sides contiguous) become one copy.
  void add(RowRange r) {
    if (r.rows == 0) return;
    if (!ranges_.empty()) {
      RowRange& last = ranges_.back();
      const bool follows = last.out_start + last.rows == r.out_start && last.src == r.src &&
                           (r.src < 0 || last.src_start + last.rows == r.src_start);
      if (follows) {
        last.rows += r.rows;
        return;
      }
    }
    ranges_.push_back(r);
  }

  std::vector<RowRange> ranges_;
};

// Shards of ranks [rank_begin, rank_end) of x, concatenated: per slot, the chunk's valid rows then padding.
Plan shard_plan(const ShardGeometry& g, int64_t rank_begin, int64_t rank_end) {
  Plan plan;
  for (int64_t r = rank_begin; r < rank_end; ++r) {
    for (int64_t slot = 0; slot < g.per_rank; ++slot) {
      const int64_t c = g.chunk_of(r, slot);
      const int64_t valid = g.valid_rows(c);
      const int64_t out_start = ((r - rank_begin) * g.per_rank + slot) * g.chunk;
      plan.copy(out_start, 0, c * g.chunk, valid);
      plan.fill(out_start + valid, g.chunk - valid);
    }
  }
  return plan;
}

// Original order from shards. concatenated: sources[0] holds every shard back to back; only_rank >= 0: only
// that rank's shard is given (sources[0]) and the other ranks' chunks are filled.
Plan unshard_plan(const ShardGeometry& g, bool concatenated, int64_t only_rank) {
  Plan plan;
  for (int64_t c = 0; c < g.n_chunks(); ++c) {
    const int64_t rows = g.valid_rows(c);
    if (rows == 0) break;
    const auto [rank, slot] = g.owner_of(c);
    if (only_rank >= 0 && rank != only_rank) {
      plan.fill(c * g.chunk, rows);
    } else if (only_rank >= 0 || !concatenated) {
      plan.copy(c * g.chunk, only_rank >= 0 ? 0 : rank, slot * g.chunk, rows);
    } else {
      plan.copy(c * g.chunk, 0, rank * g.shard + slot * g.chunk, rows);
    }
  }
  return plan;
}

at::Tensor shard_out_cpu(const char* op, const at::Tensor& x, int64_t dim, int64_t padded, int64_t sp_size,
                         int64_t rank_begin, int64_t rank_end, int64_t layout, const at::Scalar& pad_value,
                         at::Tensor& out) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dim");
  const int64_t length = x.size(at::maybe_wrap_dim(dim, x.dim()));
  const ShardGeometry g = make_shard_geometry(op, x.dim(), dim, length, padded, sp_size, layout);
  check_out(op, out, x, resized_along(x, g.dim, (rank_end - rank_begin) * g.shard));
  shard_plan(g, rank_begin, rank_end).run(out, {x}, g.dim, pad_value);
  return out;
}

at::Tensor pad_and_shard_out_cpu(const at::Tensor& x, int64_t dim, int64_t padded_length, int64_t sp_size,
                                 int64_t rank, int64_t layout, const at::Scalar& pad_value, at::Tensor out) {
  TORCH_CHECK(rank >= 0 && rank < sp_size, "pad_and_shard: rank must be in [0, ", sp_size, "), got ", rank);
  return shard_out_cpu("pad_and_shard", x, dim, padded_length, sp_size, rank, rank + 1, layout, pad_value, out);
}

at::Tensor shard_all_out_cpu(const at::Tensor& x, int64_t dim, int64_t padded_length, int64_t sp_size, int64_t layout,
                             const at::Scalar& pad_value, at::Tensor out) {
  return shard_out_cpu("shard_all", x, dim, padded_length, sp_size, 0, sp_size, layout, pad_value, out);
}

at::Tensor unshard_out_cpu(at::TensorList shards, int64_t dim, int64_t length, int64_t sp_size, int64_t layout,
                           at::Tensor out) {
  ShardGeometry g;
  check_shards("unshard", shards, dim, length, sp_size, layout, &g);
  check_out("unshard", out, shards[0], resized_along(shards[0], g.dim, length));
  for (const at::Tensor& s : shards) at::assert_no_overlap(out, s);
  const std::vector<at::Tensor> sources(shards.begin(), shards.end());
  unshard_plan(g, shards.size() == 1, -1).run(out, sources, g.dim, 0);
  return out;
}

at::Tensor scatter_shard_out_cpu(const at::Tensor& shard, int64_t dim, int64_t length, int64_t sp_size, int64_t rank,
                                 int64_t layout, at::Tensor out) {
  TORCH_CHECK(shard.dim() >= 1, "scatter_shard: need a tensor with a dim");
  const int64_t d = at::maybe_wrap_dim(dim, shard.dim());
  const ShardGeometry g =
      make_shard_geometry("scatter_shard", shard.dim(), dim, length, shard.size(d) * sp_size, sp_size, layout);
  check_rank("scatter_shard", g, rank);
  check_out("scatter_shard", out, shard, resized_along(shard, g.dim, length));
  unshard_plan(g, false, rank).run(out, {shard}, g.dim, 0);
  return out;
}

// The functional forms, written once for every device: allocate the contiguous output, then call the .out op
// through the dispatcher, which picks the device's kernel (below for the CPU, csrc/cuda_bind/pad_shard.cpp for
// CUDA). Registered as CompositeExplicitAutograd, so autograd is handled as for the .out kernels (by the
// autograd.Functions in longrl/_ops/pad_shard.py). The typed<> signatures are the .out kernels' C++ signatures
// (out by value; the CPU and CUDA kernels must keep them identical), which the dispatcher checks on each call.
at::Tensor pad_and_shard(const at::Tensor& x, int64_t dim, int64_t padded_length, int64_t sp_size, int64_t rank,
                         int64_t layout, const at::Scalar& pad_value) {
  static const auto out_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("longrl::pad_and_shard", "out")
          .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, const at::Scalar&,
                            at::Tensor)>();
  TORCH_CHECK(x.dim() >= 1 && sp_size >= 1, "pad_and_shard: need a tensor with a dim and sp_size >= 1");
  at::Tensor out = at::empty(resized_along(x, at::maybe_wrap_dim(dim, x.dim()), padded_length / sp_size), x.options());
  return out_op.call(x, dim, padded_length, sp_size, rank, layout, pad_value, out);
}

at::Tensor shard_all(const at::Tensor& x, int64_t dim, int64_t padded_length, int64_t sp_size, int64_t layout,
                     const at::Scalar& pad_value) {
  static const auto out_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("longrl::shard_all", "out")
          .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, const at::Scalar&, at::Tensor)>();
  TORCH_CHECK(x.dim() >= 1, "shard_all: need a tensor with a dim");
  at::Tensor out = at::empty(resized_along(x, at::maybe_wrap_dim(dim, x.dim()), padded_length), x.options());
  return out_op.call(x, dim, padded_length, sp_size, layout, pad_value, out);
}

at::Tensor unshard(at::TensorList shards, int64_t dim, int64_t length, int64_t sp_size, int64_t layout) {
  static const auto out_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("longrl::unshard", "out")
                                 .typed<at::Tensor(at::TensorList, int64_t, int64_t, int64_t, int64_t, at::Tensor)>();
  TORCH_CHECK(!shards.empty() && shards[0].dim() >= 1, "unshard: need shards with a dim");
  const at::Tensor& first = shards[0];
  at::Tensor out = at::empty(resized_along(first, at::maybe_wrap_dim(dim, first.dim()), length), first.options());
  return out_op.call(shards, dim, length, sp_size, layout, out);
}

at::Tensor scatter_shard(const at::Tensor& shard, int64_t dim, int64_t length, int64_t sp_size, int64_t rank,
                         int64_t layout) {
  static const auto out_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("longrl::scatter_shard", "out")
          .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, at::Tensor)>();
  TORCH_CHECK(shard.dim() >= 1, "scatter_shard: need a tensor with a dim");
  at::Tensor out = at::empty(resized_along(shard, at::maybe_wrap_dim(dim, shard.dim()), length), shard.options());
  return out_op.call(shard, dim, length, sp_size, rank, layout, out);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longrl, m) {
  // Rank `rank`'s shard of x along dim, x padded at the end to padded_length with pad_value.
  m.def("pad_and_shard(Tensor x, int dim, int padded_length, int sp_size, int rank, int layout, Scalar pad_value) "
        "-> Tensor");
  m.def("pad_and_shard.out(Tensor x, int dim, int padded_length, int sp_size, int rank, int layout, "
        "Scalar pad_value, *, Tensor(a!) out) -> Tensor(a!)");
  // Every rank's shard concatenated in rank order (padded_length along dim): the backward of unshard.
  m.def("shard_all(Tensor x, int dim, int padded_length, int sp_size, int layout, Scalar pad_value) -> Tensor");
  m.def("shard_all.out(Tensor x, int dim, int padded_length, int sp_size, int layout, Scalar pad_value, *, "
        "Tensor(a!) out) -> Tensor(a!)");
  // Original order (length along dim) from sp_size shards, or from one tensor holding them concatenated.
  m.def("unshard(Tensor[] shards, int dim, int length, int sp_size, int layout) -> Tensor");
  m.def("unshard.out(Tensor[] shards, int dim, int length, int sp_size, int layout, *, Tensor(a!) out) "
        "-> Tensor(a!)");
  // One rank's shard put back at its positions (length along dim), zeros elsewhere: the backward of
  // pad_and_shard.
  m.def("scatter_shard(Tensor shard, int dim, int length, int sp_size, int rank, int layout) -> Tensor");
  m.def("scatter_shard.out(Tensor shard, int dim, int length, int sp_size, int rank, int layout, *, "
        "Tensor(a!) out) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(longrl, CompositeExplicitAutograd, m) {
  m.impl("pad_and_shard", &pad_and_shard);
  m.impl("shard_all", &shard_all);
  m.impl("unshard", &unshard);
  m.impl("scatter_shard", &scatter_shard);
}

TORCH_LIBRARY_IMPL(longrl, CPU, m) {
  m.impl("pad_and_shard.out", &pad_and_shard_out_cpu);
  m.impl("shard_all.out", &shard_all_out_cpu);
  m.impl("unshard.out", &unshard_out_cpu);
  m.impl("scatter_shard.out", &scatter_shard_out_cpu);
}

}  // namespace longrl
