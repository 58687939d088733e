// The Python module longrl._C. Loading it registers every op in the `longrl` torch library
// (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL blocks in csrc/cpu and csrc/cuda_bind run at load time);
// pybind11 classes are added by the binders registered through LONGRL_REGISTER_PY_BINDER.
#include <vector>

#include "common/py_binders.h"

namespace longrl {

static std::vector<PyBinder>& binders() {
  static std::vector<PyBinder> all;
  return all;
}

bool add_py_binder(PyBinder binder) {
  binders().push_back(binder);
  return true;
}

void run_py_binders(pybind11::module_& m) {
  for (PyBinder b : binders()) b(m);
}

}  // namespace longrl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "longrl compiled ops (CPU C++ and, when built with CUDA, CUDA kernels)";
#ifdef LONGRL_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  longrl::run_py_binders(m);
}
