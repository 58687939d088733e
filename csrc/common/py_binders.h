// Registry of pybind11 binders, so each C++ file that exposes a Python class registers itself and
// csrc/module.cpp never needs editing when a new one is added.
#pragma once
#include <torch/extension.h>

namespace longrl {

using PyBinder = void (*)(pybind11::module_&);

// Adds a binder; called from a static initializer in the file that defines the bindings.
bool add_py_binder(PyBinder binder);

// Runs every registered binder on the extension module (called once, from PYBIND11_MODULE).
void run_py_binders(pybind11::module_& m);

}  // namespace longrl

#define LONGRL_REGISTER_PY_BINDER(fn) \
  static const bool longrl_py_binder_registered_##fn = ::longrl::add_py_binder(&fn)
