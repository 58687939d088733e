// CUDA implementation of longrl::paged_copy_ (thin binding over csrc/cuda/embedding_cache.cu).
// The segments arrive on the CPU (the index builds them there): they are bounds-checked here, staged through
// pinned memory and copied to the device on the current stream, so the launch never waits for the host.
#include <torch/library.h>

#include <cstring>

#include "common/cuda_bind.h"
#include "common/pad_pattern.h"
#include "cpu/embedding_cache_checks.h"
#include "cuda/embedding_cache.h"

namespace longrl {

namespace {

void paged_copy_cuda(at::Tensor dst, const at::Tensor& src, const at::Tensor& segments, double pad_value) {
  const int64_t max_rows = check_paged_copy_args(dst, src, segments);
  TORCH_CHECK(dst.is_cuda(), "paged_copy_: dst and src must be CUDA tensors for the CUDA kernel");
  const int64_t num_segments = segments.size(0);
  if (num_segments == 0 || max_rows == 0) return;
  const at::cuda::CUDAGuard guard(dst.device());
  // pin_memory() uses the caching host allocator, which keeps the block alive until the async copy is done.
  const at::Tensor device_segments = segments.pin_memory().to(dst.options().dtype(at::kLong), /*non_blocking=*/true);
  const auto bytes = pad_pattern("paged_copy_", dst.scalar_type(), pad_value);
  PadPattern pad;
  std::memcpy(pad.bytes, bytes.data(), sizeof(pad.bytes));
  LONGRL_CUDA_CHECK(launch_paged_copy(dst.data_ptr(), src.data_ptr(), device_segments.data_ptr<int64_t>(),
                                      num_segments, max_rows, dst.size(1) * dst.element_size(), pad,
                                      current_stream(dst)));
}

}  // namespace

TORCH_LIBRARY_IMPL(longrl, CUDA, m) { m.impl("paged_copy_", &paged_copy_cuda); }

}  // namespace longrl
