// Helpers for the thin CUDA bindings in csrc/cuda_bind (compiled only with CUDA).
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#define LONGRL_CUDA_CHECK(expr)                                                             \
  do {                                                                                      \
    cudaError_t err__ = (expr);                                                             \
    TORCH_CHECK(err__ == cudaSuccess, "longrl CUDA error: ", cudaGetErrorString(err__), " (", \
                #expr, ")");                                                                \
  } while (0)

namespace longrl {

inline cudaStream_t current_stream(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

}  // namespace longrl
