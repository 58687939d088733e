// Element-type tags shared by the torch-free CUDA kernels (csrc/cuda/*.cu) and their bindings.
#pragma once

namespace longrl {

// Only the floating types a kernel dispatches on; add a tag together with the kernel that needs it.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace longrl
