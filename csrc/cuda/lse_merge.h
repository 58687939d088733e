// Launcher for the lse_merge CUDA kernel (torch-free interface).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace longrl {

// out [rows, dim] fp32 and lse [rows] fp32 are updated in place from block_out [rows, dim] (block_dtype)
// and block_lse [rows] fp32. All pointers contiguous on the current device.
cudaError_t launch_lse_merge(float* out, float* lse, const void* block_out, DType block_dtype,
                             const float* block_lse, int64_t rows, int64_t dim, cudaStream_t stream);

}  // namespace longrl
