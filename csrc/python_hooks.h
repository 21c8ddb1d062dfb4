// Module functions of fastunlearn._C that register the Python side of the op kernels.
#pragma once

#include <Python.h>

namespace fastunlearn {

// register_backend(name, gram, combine_, sgd_step_, adamw_step_): a backend written in Python.
PyObject* register_backend(PyObject* self, PyObject* args);
// set_hooks(resolver, weighting): resolver(device: str) -> backend name for "auto";
// weighting(name, gram, eps, order) -> (K,) weights on devices without the C++ scalar stage.
PyObject* set_hooks(PyObject* self, PyObject* args);

}  // namespace fastunlearn
