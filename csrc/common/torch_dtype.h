// Conversion from torch scalar types to the kernels' DType tags (used by the .cpp bindings only).
#pragma once
#include <ATen/ATen.h>

#include "common/dtype.h"

namespace longrl {

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "longrl: unsupported dtype ", t);
  }
}

}  // namespace longrl
