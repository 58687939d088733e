// The fill pattern of pad positions for the byte-copying kernels (pad_and_shard, paged_copy_): 16 bytes holding
// `value` converted to `dtype`, repeated, so a kernel can fill any run of whole elements with 16-byte stores.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <cstring>

namespace longrl {

// The conversion is at::scalar_tensor's (the same conversion and overflow check as fill_). `op` names the
// caller in the error for an element size that does not divide 16.
inline std::array<uint8_t, 16> pad_pattern(const char* op, at::ScalarType dtype, const at::Scalar& value) {
  const at::Tensor one = at::scalar_tensor(value, at::TensorOptions().dtype(dtype));
  const int64_t size = static_cast<int64_t>(one.element_size());
  TORCH_CHECK(16 % size == 0, op, ": element size ", size, " is not supported");
  std::array<uint8_t, 16> pattern{};
  for (int64_t k = 0; k < 16; k += size) std::memcpy(pattern.data() + k, one.data_ptr(), size);
  return pattern;
}

}  // namespace longrl
