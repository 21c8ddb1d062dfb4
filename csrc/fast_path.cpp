#include "fast_path.h"

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <vector>

#include "cpu/combine.h"
#include "cpu/gram.h"
#include "overlap.h"

namespace fastunlearn {
namespace {

// The dtypes the public ops take (fastunlearn/_validate.py FLOAT_DTYPES).
bool supported_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
}

// Wrapper tensors (DTensor, fake and functional tensors, vmap batches) take the ordinary route.
bool plain_tensor(const at::Tensor& t) {
  const c10::DispatchKeySet keys = t.key_set();
  return !keys.has(c10::DispatchKey::Python) && !keys.has(c10::DispatchKey::FuncTorchBatched) &&
         !keys.has(c10::DispatchKey::Functionalize);
}

std::vector<at::Tensor> unpack_tensors(PyObject* list) {
  TORCH_CHECK_TYPE(PyList_Check(list), "fastunlearn: expected a list of tensors");
  const Py_ssize_t size = PyList_GET_SIZE(list);
  std::vector<at::Tensor> tensors;
  tensors.reserve(size);
  for (Py_ssize_t i = 0; i < size; ++i) {
    PyObject* item = PyList_GET_ITEM(list, i);
    TORCH_CHECK_TYPE(THPVariable_Check(item), "fastunlearn: element ", i, " is not a tensor");
    tensors.push_back(THPVariable_Unpack(item));
    TORCH_CHECK_TYPE(plain_tensor(tensors.back()), "fastunlearn: element ", i, " is a wrapper tensor");
  }
  return tensors;
}

// K vectors of n CPU shards: one supported dtype, shapes equal at each shard index, and no shard
// that needs autograd while grad mode is on (the fast path has no backward; outputs that require
// grad may only be written under no_grad). What fastunlearn/_validate.py checks, in C++.
void check_vectors(const std::vector<at::Tensor>& shards, int64_t k, bool allow_grad) {
  TORCH_CHECK_VALUE(k > 0 && !shards.empty() && shards.size() % k == 0, "fastunlearn: bad shard list");
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const at::ScalarType dtype = shards[0].scalar_type();
  TORCH_CHECK_TYPE(supported_dtype(dtype), "fastunlearn: dtype");
  const bool grad_mode = at::GradMode::is_enabled();
  for (size_t s = 0; s < shards.size(); ++s) {
    const at::Tensor& t = shards[s];
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == dtype, "fastunlearn: shard ", s);
    TORCH_CHECK_VALUE(allow_grad || !grad_mode || !t.requires_grad(), "fastunlearn: shard ", s, " requires grad");
    TORCH_CHECK_VALUE(s < static_cast<size_t>(n) || t.sizes() == shards[s % n].sizes(), "fastunlearn: shard ", s);
  }
}

PyObject* gram_list(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* list = nullptr;
  Py_ssize_t k = 0;
  if (!PyArg_ParseTuple(args, "On", &list, &k)) return nullptr;
  const std::vector<at::Tensor> shards = unpack_tensors(list);
  check_vectors(shards, k, /*allow_grad=*/false);
  return THPVariable_Wrap(gram_cpu(shards, k));
  END_HANDLE_TH_ERRORS
}

// out[i] = sum_k weights[k] * vectors[k][i]; outs may be the first vector's shards (in place).
PyObject* combine_list(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_list = nullptr, *list = nullptr, *weights_obj = nullptr;
  Py_ssize_t k = 0;
  if (!PyArg_ParseTuple(args, "OOOn", &out_list, &weights_obj, &list, &k)) return nullptr;
  const std::vector<at::Tensor> outs = unpack_tensors(out_list);
  const std::vector<at::Tensor> shards = unpack_tensors(list);
  TORCH_CHECK_TYPE(THPVariable_Check(weights_obj), "fastunlearn: weights");
  const at::Tensor& weights = THPVariable_Unpack(weights_obj);
  TORCH_CHECK_VALUE(weights.dim() == 1 && weights.size(0) == k && supported_dtype(weights.scalar_type()) &&
                        weights.device().is_cpu() && plain_tensor(weights),
                    "fastunlearn: weights");
  check_vectors(shards, k, /*allow_grad=*/true);
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  TORCH_CHECK_VALUE(static_cast<int64_t>(outs.size()) == n, "fastunlearn: out");
  std::vector<at::Tensor> both(outs);
  both.insert(both.end(), shards.begin(), shards.begin() + n);
  check_vectors(both, 2, /*allow_grad=*/false);
  TORCH_CHECK_VALUE(find_overlap(outs, shards, n).empty(), "fastunlearn: overlap");
  {
    pybind11::gil_scoped_release no_gil;
    combine_cpu(outs, weights.reshape({1, -1}), shards, k);
  }
  for (const auto& t : outs) t.unsafeGetTensorImpl()->bump_version();
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"gram_list", gram_list, METH_VARARGS, "Gram matrix of a flat, vector-major shard list (fast path)."},
    {"combine_list", combine_list, METH_VARARGS, "combine_ on flat shard lists (fast path)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMethodDef* fast_path_methods() { return methods; }

}  // namespace fastunlearn
