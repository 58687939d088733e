// Element-type tags shared by the torch-free CUDA kernels (csrc/cuda/*.cu) and their bindings.
#pragma once

namespace longrl {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kInt64 = 4, kInt32 = 5, kBool = 6, kUInt8 = 7 };

}  // namespace longrl
