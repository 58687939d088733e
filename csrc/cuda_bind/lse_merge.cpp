// CUDA implementation of longrl::lse_merge_ (thin binding over csrc/cuda/lse_merge.cu).
#include <torch/library.h>

#include "common/cuda_bind.h"
#include "common/torch_dtype.h"
#include "cpu/lse_merge_checks.h"
#include "cuda/lse_merge.h"

namespace longrl {

TORCH_LIBRARY_IMPL(longrl, CUDA, m) {
  m.impl("lse_merge_", [](at::Tensor out, at::Tensor lse, const at::Tensor& block_out, const at::Tensor& block_lse) {
    check_lse_merge_args(out, lse, block_out, block_lse);
    const at::cuda::CUDAGuard guard(out.device());
    const at::Tensor bo = block_out.contiguous();
    const at::Tensor bl = block_lse.contiguous();
    LONGRL_CUDA_CHECK(launch_lse_merge(out.data_ptr<float>(), lse.data_ptr<float>(), bo.data_ptr(),
                                       to_dtype(bo.scalar_type()), bl.data_ptr<float>(), lse.numel(), out.size(-1),
                                       current_stream(out)));
  });
}

}  // namespace longrl
