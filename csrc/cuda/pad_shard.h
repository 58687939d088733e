// Launchers for the pad_and_shard / unshard CUDA kernels (torch-free interface).
//
// Tensors are seen as contiguous bytes [outer, rows, row_bytes]: `outer` = product of the dims before the
// sequence dim, `row_bytes` = product of the dims after it times the element size. The kernels move bytes,
// so they serve every dtype; the pad value arrives as 16 bytes holding the element repeated (element sizes
// 1, 2, 4, 8 and 16 divide 16). Geometry as in csrc/cpu/pad_shard_checks.h: L positions padded to
// P = n_chunks * C, layout 0 contiguous (n = sp), 1 zigzag (n = 2*sp, rank r holds chunks r, 2*sp-1-r).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace longrl {

// Most ranks unshard / scatter_shard take (shard pointers travel as kernel arguments); the binding rejects a
// larger sp_size.
constexpr int kUnshardMaxShards = 128;

struct PadShardDims {
  int64_t outer;      // product of the dims before the sequence dim
  int64_t row_bytes;  // bytes of one sequence position (dims after it x element size)
  int64_t length;     // L: valid positions
  int64_t chunk;      // C: positions per chunk (P / n_chunks)
  int64_t sp;         // ranks
  int64_t layout;     // 0 contiguous, 1 zigzag
};

// out [outer, (rank_end - rank_begin) * S, row] <- the shards of ranks [rank_begin, rank_end), in rank order,
// of src [outer, L, row]; padding positions get `pad16`. S = C * (layout ? 2 : 1).
cudaError_t launch_pad_and_shard(void* out, const void* src, const PadShardDims& d, int64_t rank_begin,
                                 int64_t rank_end, const void* pad16, cudaStream_t stream);

// out [outer, L, row] <- original order. shards[r] (r < sp): start of rank r's shard, whose consecutive outer
// indices are `shard_outer_rows` positions apart (S for separate shards, P inside a concatenated tensor); a
// null shards[r] means its chunks are filled with `pad16` (the backward of pad_and_shard fills zeros).
cudaError_t launch_unshard(void* out, const void* const* shards, int64_t shard_outer_rows, const PadShardDims& d,
                           const void* pad16, cudaStream_t stream);

}  // namespace longrl
