// Argument checks shared by the CPU and CUDA lse_merge implementations.
#pragma once
#include <ATen/ATen.h>

namespace longrl {

inline void check_lse_merge_args(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& block_out,
                                 const at::Tensor& block_lse) {
  TORCH_CHECK(out.scalar_type() == at::kFloat && lse.scalar_type() == at::kFloat,
              "lse_merge_: out and lse must be float32 accumulators");
  TORCH_CHECK(block_lse.scalar_type() == at::kFloat, "lse_merge_: block_lse must be float32");
  TORCH_CHECK(out.is_contiguous() && lse.is_contiguous(), "lse_merge_: out and lse must be contiguous");
  TORCH_CHECK(out.dim() >= 1 && out.dim() == lse.dim() + 1, "lse_merge_: out must be lse's shape plus a last dim");
  TORCH_CHECK(out.sizes().slice(0, lse.dim()) == lse.sizes(), "lse_merge_: out.shape[:-1] must equal lse.shape");
  TORCH_CHECK(block_out.scalar_type() == at::kFloat || block_out.scalar_type() == at::kHalf ||
                  block_out.scalar_type() == at::kBFloat16,
              "lse_merge_: block_out must be float32, float16 or bfloat16, got ", block_out.scalar_type());
  TORCH_CHECK(block_out.sizes() == out.sizes(), "lse_merge_: block_out must have out's shape");
  TORCH_CHECK(block_lse.sizes() == lse.sizes(), "lse_merge_: block_lse must have lse's shape");
  TORCH_CHECK(block_out.device() == out.device() && lse.device() == out.device() &&
                  block_lse.device() == out.device(),
              "lse_merge_: all tensors must be on one device");
}

}  // namespace longrl
