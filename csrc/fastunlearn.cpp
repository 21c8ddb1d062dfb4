// fastunlearn._C: op schemas of the C++ kernels and their CPU registrations. The public ops live in
// fastunlearn/ops.py (namespace `fastunlearn`); these are the kernels its `cpp` backend calls.
#include <Python.h>
#include <torch/library.h>

#include "cpu/combine.h"
#include "cpu/fused_step.h"
#include "cpu/gram.h"
#include "fast_path.h"
#include "overlap.h"
#include "schemas.h"

#include <vector>

namespace {

// Whether this build holds the CUDA kernels (csrc/cuda), registered as torch.ops.fastunlearn_cuda.
PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef FASTUNLEARN_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef* module_methods() {
  static std::vector<PyMethodDef> methods = [] {
    std::vector<PyMethodDef> all;
    for (PyMethodDef* m = fastunlearn::fast_path_methods(); m->ml_name != nullptr; ++m) all.push_back(*m);
    all.push_back({"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were built."});
    all.push_back({nullptr, nullptr, 0, nullptr});
    return all;
  }();
  return methods.data();
}

}  // namespace

extern "C" {
// Importing fastunlearn._C runs the static registrations below; the module itself holds the fast
// paths for long shard lists (fast_path.h) and has_cuda().
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, module_methods()};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastunlearn_cpu, m) {
  m.def(fastunlearn::schema::kGram);
  m.def(fastunlearn::schema::kCombine);
  m.def(fastunlearn::schema::kSgdStep);
  m.def(fastunlearn::schema::kAdamwStep);
}

// Metadata only: one kernel for every device.
TORCH_LIBRARY_FRAGMENT(fastunlearn_cpu, m) {
  m.def("find_overlap(Tensor[] outs, Tensor[] inputs, int n) -> int[]", &fastunlearn::find_overlap);
}

TORCH_LIBRARY_IMPL(fastunlearn_cpu, CPU, m) {
  m.impl("gram", &fastunlearn::gram_cpu);
  m.impl("combine_", &fastunlearn::combine_cpu);
  m.impl("sgd_step_", &fastunlearn::sgd_step_cpu);
  m.impl("adamw_step_", &fastunlearn::adamw_step_cpu);
}
