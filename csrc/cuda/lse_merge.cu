// lse_merge CUDA kernel: one warp per row; the warp reads the row's two lse values, merges the row's
// D values with stable weights, then lane 0 writes the merged lse (after every lane has read the old one).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/lse_merge.h"

namespace longrl {
namespace {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

constexpr int kWarpsPerBlock = 8;

// kVec4: float rows moved as float4 (16-byte loads/stores); only when D % 4 == 0 and both row pointers are
// 16-byte aligned (a contiguous view with a storage offset need not be).
template <typename T, bool kVec4>
__global__ void lse_merge_kernel(float* __restrict__ out, float* __restrict__ lse, const T* __restrict__ block_out,
                                 const float* __restrict__ block_lse, int64_t rows, int64_t dim) {
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const float a = lse[row];
  const float b = block_lse[row];
  __syncwarp();
  if (b == -INFINITY) return;
  float* o = out + row * dim;
  const T* bo = block_out + row * dim;
  if (a == -INFINITY) {
    for (int64_t d = lane; d < dim; d += 32) o[d] = to_float(bo[d]);
    if (lane == 0) lse[row] = b;
    return;
  }
  // Weights as ratios of the shifted exponentials (not exp(a - merged)): no float32 rounding of the merged
  // lse leaks into them, which matters at large |lse|.
  const float m = fmaxf(a, b);
  const float ea = expf(a - m);
  const float eb = expf(b - m);
  const float sum = ea + eb;
  const float merged = m + logf(sum);
  const float wa = ea / sum;
  const float wb = eb / sum;
  if constexpr (kVec4) {
    float4* o4 = reinterpret_cast<float4*>(o);
    const float4* b4 = reinterpret_cast<const float4*>(bo);
    for (int64_t d = lane; d < dim / 4; d += 32) {
      float4 x = o4[d];
      const float4 y = b4[d];
      x.x = x.x * wa + y.x * wb;
      x.y = x.y * wa + y.y * wb;
      x.z = x.z * wa + y.z * wb;
      x.w = x.w * wa + y.w * wb;
      o4[d] = x;
    }
  } else {
    for (int64_t d = lane; d < dim; d += 32) o[d] = o[d] * wa + to_float(bo[d]) * wb;
  }
  if (lane == 0) lse[row] = merged;
}

template <typename T>
cudaError_t launch(float* out, float* lse, const void* block_out, const float* block_lse, int64_t rows, int64_t dim,
                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const dim3 block(32, kWarpsPerBlock);
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const bool aligned = ((reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(block_out)) & 15) == 0;
  if (sizeof(T) == 4 && (dim & 3) == 0 && aligned) {
    lse_merge_kernel<T, sizeof(T) == 4><<<grid, block, 0, stream>>>(out, lse, static_cast<const T*>(block_out),
                                                                    block_lse, rows, dim);
  } else {
    lse_merge_kernel<T, false><<<grid, block, 0, stream>>>(out, lse, static_cast<const T*>(block_out), block_lse,
                                                           rows, dim);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_lse_merge(float* out, float* lse, const void* block_out, DType block_dtype, const float* block_lse,
                             int64_t rows, int64_t dim, cudaStream_t stream) {
  switch (block_dtype) {
    case DType::kFloat32: return launch<float>(out, lse, block_out, block_lse, rows, dim, stream);
    case DType::kFloat16: return launch<__half>(out, lse, block_out, block_lse, rows, dim, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(out, lse, block_out, block_lse, rows, dim, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace longrl
