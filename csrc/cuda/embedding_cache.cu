// EmbeddingCache copy kernel: a batched memcpy of row segments between the paged slab and a batch buffer.
//
// Each segment (one page of an entry, or a run of pad rows) is a contiguous byte range on both sides, so the
// kernel copies bytes with the widest vector (16/8/4/2/1 bytes) that the pointers and the row size allow; the
// element type never matters except for the pad pattern, which arrives as 16 ready bytes. Grid: x = segment,
// y = chunk of kChunkBytes within it (pages are equal-sized, so blocks get equal work and a large gather
// spreads across every SM).
#include <cuda_runtime.h>

#include <climits>
#include <cstring>

#include "cuda/embedding_cache.h"

namespace longrl {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkBytes = 64 << 10;
constexpr int64_t kMaxGridY = 65535;

template <typename V>
__global__ void paged_copy_kernel(char* __restrict__ dst, const char* __restrict__ src,
                                  const int64_t* __restrict__ segments, int64_t row_bytes, int64_t chunk_vecs, V pad) {
  const int64_t seg = blockIdx.x;
  const int64_t dst_row = segments[3 * seg];
  const int64_t src_row = segments[3 * seg + 1];
  const int64_t rows = segments[3 * seg + 2];
  const int64_t total = rows * row_bytes / static_cast<int64_t>(sizeof(V));
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk_vecs;
  if (begin >= total) return;
  const int64_t end = begin + chunk_vecs < total ? begin + chunk_vecs : total;
  V* d = reinterpret_cast<V*>(dst + dst_row * row_bytes);
  if (src_row < 0) {
#pragma unroll 4
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) d[i] = pad;
    return;
  }
  const V* s = reinterpret_cast<const V*>(src + src_row * row_bytes);
#pragma unroll 4
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) d[i] = s[i];
}

template <typename V>
cudaError_t launch(void* dst, const void* src, const int64_t* segments, int64_t num_segments,
                   int64_t max_segment_rows, int64_t row_bytes, const PadPattern& pad, cudaStream_t stream) {
  const int64_t max_vecs = max_segment_rows * row_bytes / static_cast<int64_t>(sizeof(V));
  int64_t chunk_vecs = kChunkBytes / static_cast<int64_t>(sizeof(V));
  // Huge pad runs: grow the chunk so the grid's y stays within CUDA's limit.
  if ((max_vecs + chunk_vecs - 1) / chunk_vecs > kMaxGridY) chunk_vecs = (max_vecs + kMaxGridY - 1) / kMaxGridY;
  const int64_t grid_y = (max_vecs + chunk_vecs - 1) / chunk_vecs;
  V pad_vec;
  std::memcpy(&pad_vec, pad.bytes, sizeof(V));
  const dim3 grid(static_cast<unsigned>(num_segments), static_cast<unsigned>(grid_y));
  paged_copy_kernel<V><<<grid, kThreads, 0, stream>>>(static_cast<char*>(dst), static_cast<const char*>(src),
                                                       segments, row_bytes, chunk_vecs, pad_vec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_paged_copy(void* dst, const void* src, const int64_t* segments, int64_t num_segments,
                              int64_t max_segment_rows, int64_t row_bytes, PadPattern pad, cudaStream_t stream) {
  if (num_segments < 0 || max_segment_rows < 0 || row_bytes < 1 || num_segments > INT_MAX) return cudaErrorInvalidValue;
  if (num_segments == 0 || max_segment_rows == 0) return cudaSuccess;
  // Every segment starts at a row boundary, so the vector width may use the pointers' and row size's common alignment.
  const unsigned long long align = reinterpret_cast<unsigned long long>(dst) |
                                   reinterpret_cast<unsigned long long>(src) |
                                   static_cast<unsigned long long>(row_bytes);
  if (align % 16 == 0) return launch<uint4>(dst, src, segments, num_segments, max_segment_rows, row_bytes, pad, stream);
  if (align % 8 == 0) return launch<uint2>(dst, src, segments, num_segments, max_segment_rows, row_bytes, pad, stream);
  if (align % 4 == 0) {
    return launch<unsigned int>(dst, src, segments, num_segments, max_segment_rows, row_bytes, pad, stream);
  }
  if (align % 2 == 0) {
    return launch<unsigned short>(dst, src, segments, num_segments, max_segment_rows, row_bytes, pad, stream);
  }
  return launch<unsigned char>(dst, src, segments, num_segments, max_segment_rows, row_bytes, pad, stream);
}

}  // namespace longrl
