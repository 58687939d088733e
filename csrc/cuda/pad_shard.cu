// pad_and_shard / unshard CUDA kernels: pure data movement, so they copy bytes and never look at the dtype.
//
// Work is cut into "units": one chunk of one outer index, a contiguous run of rows in both source and output
// (a shard slot when sharding, a chunk of the original order when unsharding). grid.y walks the units,
// grid.x splits each unit's bytes. Each thread moves kUnroll vectors of the widest width (16, 8, 4, 2 or 1
// bytes) that divides the row size and every pointer; all loads are issued before the stores to keep several
// requests in flight. Positions past a unit's valid rows receive the pad pattern, so every output byte is
// written exactly once and nothing is read from padding.
//
// The kernel bodies are __host__ __device__ and take the thread's coordinates as an argument, and the launch
// decisions (vector width, grid) are made by dispatch_* templates that take the launch step as a callback:
// tests/test_pad_shard.py compiles this file into a host program that runs the same bodies over the same grid
// on the CPU, so the index math is checked on machines without a GPU.
#include <cstring>

#include "cuda/pad_shard.h"

namespace longrl {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kUnroll = 4;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 1 << 20;

// A thread's place in the launch (the CUDA built-ins, or the host emulation's loop counters).
struct ThreadPos {
  int64_t thread, threads;    // threadIdx.x, blockDim.x
  int64_t block_x, blocks_x;  // blockIdx.x, gridDim.x
  int64_t block_y, blocks_y;  // blockIdx.y, gridDim.y
};

template <typename Vec>
struct ShardArgs {
  char* out;
  const char* src;
  PadShardDims d;
  int64_t rank_begin;
  int64_t slots;  // units per outer index: shard slots of all ranks written
  Vec pad;
};

template <typename Vec>
struct UnshardArgs {
  char* out;
  const char* shards[kUnshardMaxShards];  // per rank; null: fill its chunks with pad
  int64_t shard_outer_rows;
  PadShardDims d;
  Vec pad;
};

template <typename Args>
struct Launch {
  Args args;
  dim3 grid;
  dim3 block;
};

__host__ __device__ __forceinline__ int64_t valid_rows(const PadShardDims& d, int64_t c) {
  const int64_t v = d.length - c * d.chunk;
  return v < 0 ? 0 : (v > d.chunk ? d.chunk : v);
}

// dst[i] = src[i] for i < copy_vecs, = pad for copy_vecs <= i < total_vecs: this thread's share of a unit.
template <typename Vec>
__host__ __device__ __forceinline__ void copy_then_fill(const ThreadPos& t, Vec* __restrict__ dst,
                                                        const Vec* __restrict__ src, int64_t copy_vecs,
                                                        int64_t total_vecs, const Vec pad) {
  const int64_t tile = t.threads * kUnroll;
  for (int64_t base = t.block_x * tile; base < total_vecs; base += t.blocks_x * tile) {
    Vec v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * t.threads + t.thread;
      v[u] = i < copy_vecs ? src[i] : pad;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * t.threads + t.thread;
      if (i < total_vecs) dst[i] = v[u];
    }
  }
}

// Unit u = (outer index o, slot s of the concatenated shards of ranks rank_begin, rank_begin + 1, ...).
template <typename Vec>
__host__ __device__ void pad_and_shard_body(const ThreadPos& t, const ShardArgs<Vec>& a) {
  const PadShardDims& d = a.d;
  const int64_t row_vecs = d.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const int64_t per_rank = d.layout == 1 ? 2 : 1;
  const int64_t units = d.outer * a.slots;
  for (int64_t u = t.block_y; u < units; u += t.blocks_y) {
    const int64_t o = u / a.slots;
    const int64_t s = u - o * a.slots;
    const int64_t rank = a.rank_begin + s / per_rank;
    const int64_t c = (s % per_rank == 0) ? rank : 2 * d.sp - 1 - rank;
    const int64_t valid = valid_rows(d, c);
    Vec* dst = reinterpret_cast<Vec*>(a.out) + (o * a.slots + s) * d.chunk * row_vecs;
    const Vec* src = valid ? reinterpret_cast<const Vec*>(a.src) + (o * d.length + c * d.chunk) * row_vecs : nullptr;
    copy_then_fill(t, dst, src, valid * row_vecs, d.chunk * row_vecs, a.pad);
  }
}

// Unit u = (outer index o, chunk c of the original order); chunk c lives in slot `slot` of rank `rank`.
template <typename Vec>
__host__ __device__ void unshard_body(const ThreadPos& t, const UnshardArgs<Vec>& a) {
  const PadShardDims& d = a.d;
  const int64_t row_vecs = d.row_bytes / static_cast<int64_t>(sizeof(Vec));
  const int64_t n_chunks = d.layout == 1 ? 2 * d.sp : d.sp;
  const int64_t units = d.outer * n_chunks;
  for (int64_t u = t.block_y; u < units; u += t.blocks_y) {
    const int64_t o = u / n_chunks;
    const int64_t c = u - o * n_chunks;
    const int64_t rows = valid_rows(d, c);
    if (rows == 0) continue;
    const bool second = d.layout == 1 && c >= d.sp;
    const int64_t rank = second ? 2 * d.sp - 1 - c : c;
    const int64_t slot = second ? 1 : 0;
    const char* base = a.shards[rank];
    Vec* dst = reinterpret_cast<Vec*>(a.out) + (o * d.length + c * d.chunk) * row_vecs;
    const Vec* src =
        base ? reinterpret_cast<const Vec*>(base) + (o * a.shard_outer_rows + slot * d.chunk) * row_vecs : nullptr;
    copy_then_fill(t, dst, src, base ? rows * row_vecs : 0, rows * row_vecs, a.pad);
  }
}

__device__ __forceinline__ ThreadPos this_thread() {
  return {threadIdx.x, blockDim.x, blockIdx.x, gridDim.x, blockIdx.y, gridDim.y};
}

template <typename Vec>
__global__ void pad_and_shard_kernel(const ShardArgs<Vec> a) {
  pad_and_shard_body(this_thread(), a);
}

template <typename Vec>
__global__ void unshard_kernel(const UnshardArgs<Vec> a) {
  unshard_body(this_thread(), a);
}

// The widest vector (bytes) that divides the row size and every address involved.
int vector_bytes(int64_t row_bytes, const void* const* ptrs, int n_ptrs) {
  int width = 16;
  while (width > 1) {
    bool ok = row_bytes % width == 0;
    for (int i = 0; ok && i < n_ptrs; ++i) ok = reinterpret_cast<uintptr_t>(ptrs[i]) % width == 0;
    if (ok) break;
    width /= 2;
  }
  return width;
}

// Calls fn(Vec{}) with the vector type of `bytes` bytes.
template <typename Fn>
cudaError_t with_vector(int bytes, Fn&& fn) {
  switch (bytes) {
    case 16: return fn(uint4{});
    case 8: return fn(uint2{});
    case 4: return fn(uint32_t{});
    case 2: return fn(uint16_t{});
    default: return fn(uint8_t{});
  }
}

// Grid for `units` units of at most `unit_vecs` vectors each: small units get small blocks.
template <typename Args>
void set_grid(Launch<Args>* l, int64_t units, int64_t unit_vecs) {
  int64_t threads = (unit_vecs + kUnroll - 1) / kUnroll;
  threads = threads < 32 ? 32 : (threads > kMaxThreads ? kMaxThreads : (threads + 31) / 32 * 32);
  int64_t blocks_x = (unit_vecs + threads * kUnroll - 1) / (threads * kUnroll);
  blocks_x = blocks_x < 1 ? 1 : (blocks_x > kMaxGridX ? kMaxGridX : blocks_x);
  l->block = dim3(static_cast<unsigned>(threads));
  l->grid = dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(units < kMaxGridY ? units : kMaxGridY));
}

template <typename Vec>
Vec pad_vector(const void* pad16) {
  Vec v;
  std::memset(&v, 0, sizeof(Vec));
  if (pad16 != nullptr) std::memcpy(&v, pad16, sizeof(Vec));  // the pattern repeats every element: a prefix works
  return v;
}

bool dims_ok(const PadShardDims& d) {
  return d.outer >= 0 && d.row_bytes >= 0 && d.length >= 0 && d.chunk >= 0 && d.sp >= 1 &&
         (d.layout == 0 || d.layout == 1) && d.length <= d.chunk * d.sp * (d.layout == 1 ? 2 : 1);
}

// Validates, picks the vector width and grid, and hands the Launch to `run` (which launches or emulates it).
template <typename Run>
cudaError_t dispatch_pad_and_shard(void* out, const void* src, const PadShardDims& d, int64_t rank_begin,
                                   int64_t rank_end, const void* pad16, Run&& run) {
  if (!dims_ok(d) || rank_begin < 0 || rank_end > d.sp || rank_begin > rank_end) return cudaErrorInvalidValue;
  const int64_t slots = (rank_end - rank_begin) * (d.layout == 1 ? 2 : 1);
  if (d.outer == 0 || d.row_bytes == 0 || d.chunk == 0 || slots == 0) return cudaSuccess;
  const void* ptrs[2] = {out, src};
  return with_vector(vector_bytes(d.row_bytes, ptrs, 2), [&](auto tag) {
    using Vec = decltype(tag);
    Launch<ShardArgs<Vec>> l;
    l.args = {static_cast<char*>(out), static_cast<const char*>(src), d, rank_begin, slots, pad_vector<Vec>(pad16)};
    set_grid(&l, d.outer * slots, d.chunk * (d.row_bytes / static_cast<int64_t>(sizeof(Vec))));
    return run(l);
  });
}

template <typename Run>
cudaError_t dispatch_unshard(void* out, const void* const* shards, int64_t shard_outer_rows, const PadShardDims& d,
                             const void* pad16, Run&& run) {
  if (!dims_ok(d) || d.sp > kUnshardMaxShards || shard_outer_rows < 0) return cudaErrorInvalidValue;
  if (d.outer == 0 || d.row_bytes == 0 || d.length == 0) return cudaSuccess;
  const void* ptrs[kUnshardMaxShards + 1];
  ptrs[0] = out;
  int n_ptrs = 1;
  for (int64_t r = 0; r < d.sp; ++r) {
    if (shards[r] != nullptr) ptrs[n_ptrs++] = shards[r];
  }
  return with_vector(vector_bytes(d.row_bytes, ptrs, n_ptrs), [&](auto tag) {
    using Vec = decltype(tag);
    Launch<UnshardArgs<Vec>> l;
    l.args.out = static_cast<char*>(out);
    for (int64_t r = 0; r < kUnshardMaxShards; ++r) {
      l.args.shards[r] = r < d.sp ? static_cast<const char*>(shards[r]) : nullptr;
    }
    l.args.shard_outer_rows = shard_outer_rows;
    l.args.d = d;
    l.args.pad = pad_vector<Vec>(pad16);
    const int64_t n_chunks = d.layout == 1 ? 2 * d.sp : d.sp;
    set_grid(&l, d.outer * n_chunks, d.chunk * (d.row_bytes / static_cast<int64_t>(sizeof(Vec))));
    return run(l);
  });
}

}  // namespace

cudaError_t launch_pad_and_shard(void* out, const void* src, const PadShardDims& d, int64_t rank_begin,
                                 int64_t rank_end, const void* pad16, cudaStream_t stream) {
  return dispatch_pad_and_shard(out, src, d, rank_begin, rank_end, pad16, [&](const auto& l) {
    pad_and_shard_kernel<<<l.grid, l.block, 0, stream>>>(l.args);
    return cudaGetLastError();
  });
}

cudaError_t launch_unshard(void* out, const void* const* shards, int64_t shard_outer_rows, const PadShardDims& d,
                           const void* pad16, cudaStream_t stream) {
  return dispatch_unshard(out, shards, shard_outer_rows, d, pad16, [&](const auto& l) {
    unshard_kernel<<<l.grid, l.block, 0, stream>>>(l.args);
    return cudaGetLastError();
  });
}

}  // namespace longrl
