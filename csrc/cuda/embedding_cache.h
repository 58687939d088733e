// Launcher for the EmbeddingCache copy kernel (torch-free interface; see csrc/cpu/embedding_cache_copy.cpp for
// the op's definition).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace longrl {

// 16 bytes of the pad value in the element type, repeated (every element size divides 16).
struct PadPattern {
  unsigned char bytes[16];
};

// Batched row copy on `stream`. dst and src are row-major [*, row_bytes / element_size] buffers on the current
// device; segments is a DEVICE array of num_segments triples (dst_row, src_row, rows) (src_row == -1: fill
// the rows with `pad`). max_segment_rows bounds every segment's rows (sizes the grid). Segments must not
// overlap in dst, and dst must not overlap src. Returns the launch error, if any.
cudaError_t launch_paged_copy(void* dst, const void* src, const int64_t* segments, int64_t num_segments,
                              int64_t max_segment_rows, int64_t row_bytes, PadPattern pad, cudaStream_t stream);

}  // namespace longrl
