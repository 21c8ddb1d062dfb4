// Module functions of fastunlearn._C: the registrations of the Python side of the op kernels, and
// the ops' Python entry points.
#pragma once

#include <Python.h>

namespace fastunlearn {

// register_backend(name, gram, combine_, sgd_step_, adamw_step_, token_stats_update_): a backend
// written in Python.
PyObject* register_backend(PyObject* self, PyObject* args);
// set_hooks(resolver, weighting): resolver(device: str, op: str) -> backend name for "auto" (op is
// "token_stats" or empty);
// weighting(name, gram, eps, order) -> (K,) weights on devices without the C++ scalar stage.
PyObject* set_hooks(PyObject* self, PyObject* args);

// The ops' Python entry points (python_entry.cpp), terminated by a null entry.
PyMethodDef* entry_methods();

}  // namespace fastunlearn
