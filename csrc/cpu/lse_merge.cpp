// lse_merge: merge one block's attention result (block_out, block_lse) into a running (out, lse).
// Schemas for the `longrl` torch library + the CPU kernel.
//   out [..., D] float32 (updated in place by lse_merge_), lse [...] float32,
//   block_out [..., D] float32/float16/bfloat16, block_lse [...] float32.
// Rows whose lse is -inf contributed no key: they never poison the result with their (undefined) out.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu/lse_merge_checks.h"

namespace longrl {

namespace {

template <typename scalar_t>
void lse_merge_rows(float* out, float* lse, const scalar_t* block_out, const float* block_lse, int64_t rows,
                    int64_t dim) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float a = lse[r];
      const float b = block_lse[r];
      float* o = out + r * dim;
      const scalar_t* bo = block_out + r * dim;
      if (b == kNegInf) continue;  // the block saw no key for this row: nothing changes
      if (a == kNegInf) {          // first visible block: take it as it is
        for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<float>(bo[d]);
        lse[r] = b;
        continue;
      }
      // Weights as ratios of the shifted exponentials, not exp(a - merged): the merged lse is rounded to
      // float32 (an ulp of 1e-3 at |lse| = 1e4), which would put that error into the weights.
      const float m = std::max(a, b);
      const float ea = std::exp(a - m);
      const float eb = std::exp(b - m);
      const float sum = ea + eb;
      const float merged = m + std::log(sum);
      const float wa = ea / sum;
      const float wb = eb / sum;
      for (int64_t d = 0; d < dim; ++d) o[d] = o[d] * wa + static_cast<float>(bo[d]) * wb;
      lse[r] = merged;
    }
  });
}

void lse_merge_inplace_cpu(at::Tensor& out, at::Tensor& lse, const at::Tensor& block_out,
                           const at::Tensor& block_lse) {
  check_lse_merge_args(out, lse, block_out, block_lse);
  const at::Tensor bo = block_out.contiguous();
  const at::Tensor bl = block_lse.contiguous();
  const int64_t dim = out.size(-1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bo.scalar_type(), "lse_merge_cpu", [&] {
    lse_merge_rows<scalar_t>(out.data_ptr<float>(), lse.data_ptr<float>(), bo.data_ptr<scalar_t>(),
                             bl.data_ptr<float>(), lse.numel(), dim);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(longrl, m) {
  m.def("lse_merge_(Tensor(a!) out, Tensor(b!) lse, Tensor block_out, Tensor block_lse) -> ()");
}

TORCH_LIBRARY_IMPL(longrl, CPU, m) {
  m.impl("lse_merge_", [](at::Tensor out, at::Tensor lse, const at::Tensor& block_out,
                          const at::Tensor& block_lse) { lse_merge_inplace_cpu(out, lse, block_out, block_lse); });
}

}  // namespace longrl
