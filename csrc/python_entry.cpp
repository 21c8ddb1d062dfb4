// The Python entry points of the ops: fastunlearn/ops.py calls them for eager calls on lists of
// plain tensors. Each takes the nested lists as they are, borrows their tensors (no reference
// counting: the call holds the lists' items) and calls the op through the dispatcher with a typed
// handle, so a list of 20,000 shards is never boxed into IValues, copied, or counted twice. The op
// itself -- its checks, kernels and every dispatch key -- is the one torch.ops.fastunlearn.<op>
// runs. Anything these entry points do not take (other containers, vectors of unequal length,
// items that are not tensors) returns NotImplemented, and ops.py calls torch.ops.fastunlearn.<op>,
// whose checks word the error.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <utility>
#include <vector>

#include "common/records.h"
#include "python_hooks.h"

namespace fastunlearn {
namespace {

using at::Tensor;
using at::TensorList;

// The Python objects of a long list are visited in order: prefetched ahead. (Their tensors' metadata
// is read once, by the records, on the intra-op threads.)
constexpr Py_ssize_t kPrefetchObjects = 24;

// Whether items of `type` may be borrowed: torch.Tensor itself, or a subclass without a
// __torch_function__ of its own (nn.Parameter, DTensor). A subclass with one must see the op, which
// torch.ops.fastunlearn.<op> gives it. Lists hold one type: the last answer is kept.
bool plain_type(PyTypeObject* type, PyTypeObject* tensor_type) {
  if (type == tensor_type) return true;
  static PyTypeObject* last_plain = nullptr;
  if (type == last_plain) return true;
  if (!PyType_IsSubtype(type, tensor_type)) return false;
  static PyObject* disabled = [] {
    THPObjectPtr module(PyImport_ImportModule("torch._C"));
    return module ? PyObject_GetAttrString(module.get(), "_disabled_torch_function_impl") : nullptr;
  }();
  if (disabled == nullptr) {
    PyErr_Clear();
    return false;
  }
  THPObjectPtr method(PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), "__torch_function__"));
  if (!method) {
    PyErr_Clear();
    return false;
  }
  // A classmethod's __func__ is what the class defines.
  THPObjectPtr function(PyObject_GetAttrString(method.get(), "__func__"));
  if (!function) PyErr_Clear();
  const bool plain = (function ? function.get() : method.get()) == disabled;
  if (plain) last_plain = type;
  return plain;
}

// Tensors of Python lists, borrowed: a strong reference to each item keeps it alive (also while the
// GIL is released), and no TensorImpl's reference count is touched.
class Borrowed {
 public:
  Borrowed() = default;
  Borrowed(const Borrowed&) = delete;
  Borrowed& operator=(const Borrowed&) = delete;
  ~Borrowed() {
    for (Tensor& t : tensors_) t.unsafeReleaseTensorImpl();
    for (PyObject* item : objects_) Py_DECREF(item);
  }

  // Appends the items of a list or tuple of tensors; false (nothing appended) if it is not one.
  bool add(PyObject* sequence) {
    if (!PyList_CheckExact(sequence) && !PyTuple_CheckExact(sequence)) return false;
    PyObject* const* items = PySequence_Fast_ITEMS(sequence);
    const Py_ssize_t size = PySequence_Fast_GET_SIZE(sequence);
    auto* tensor_type = reinterpret_cast<PyTypeObject*>(THPVariableClass);
    // A type check that runs no Python code for torch.Tensor and the last plain subclass seen.
    for (Py_ssize_t i = 0; i < size; ++i) {
      if (!plain_type(Py_TYPE(items[i]), tensor_type)) return false;
    }
    objects_.reserve(objects_.size() + size);
    tensors_.reserve(tensors_.size() + size);
    for (Py_ssize_t i = 0; i < size; ++i) {
      if (i + kPrefetchObjects < size) __builtin_prefetch(items[i + kPrefetchObjects]);
      Py_INCREF(items[i]);
      objects_.push_back(items[i]);
      c10::TensorImpl* impl = THPVariable_Unpack(items[i]).unsafeGetTensorImpl();
      tensors_.emplace_back(c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::reclaim(impl));
    }
    return true;
  }

  // The tensors of K vectors (a list or tuple of K lists or tuples of n >= 1 tensors each): n, or 0.
  int64_t add_vectors(PyObject* vectors, int64_t* k) {
    if (!PyList_CheckExact(vectors) && !PyTuple_CheckExact(vectors)) return 0;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(vectors);
    PyObject* const* items = PySequence_Fast_ITEMS(vectors);
    if (count == 0) return 0;
    size_t n = 0;
    for (Py_ssize_t v = 0; v < count; ++v) {
      const size_t before = tensors_.size();
      if (!add(items[v])) return 0;
      const size_t added = tensors_.size() - before;
      if (v == 0) n = added;
      if (added != n || n == 0) return 0;
    }
    *k = count;
    return static_cast<int64_t>(n);
  }

  TensorList tensors() const { return tensors_; }

 private:
  std::vector<PyObject*> objects_;
  std::vector<Tensor> tensors_;
};

// The key set the dispatcher would compute for this call, where it is one of the plain ones: CPU or
// CUDA tensors, with autograd or without (inference mode), no tensor subclass, mode or functorch
// layer, and no RecordFunction callback (profilers record an op where it is called, not where it
// is redispatched). Then the entry point redispatches with it, from the records it has read (which
// the kernels then share), and nobody reads every tensor's key set again; anything else takes the
// ordinary call.
std::optional<c10::DispatchKeySet> plain_keys(c10::DispatchKeySet tensors) {
  using c10::DispatchKey;
  using c10::DispatchKeySet;
  if (at::hasCallbacks()) return std::nullopt;
  const c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  // What the dispatcher skips for every op (fallthrough kernels) leaves the keys that run.
  const DispatchKeySet fallthrough({DispatchKey::BackendSelect, DispatchKey::ADInplaceOrView});
  const DispatchKeySet keys = ((tensors | local.included_) - local.excluded_) - fallthrough;
  for (const auto& [backend, autograd] :
       {std::pair{DispatchKey::CPU, DispatchKey::AutogradCPU}, std::pair{DispatchKey::CUDA, DispatchKey::AutogradCUDA}}) {
    if (keys == DispatchKeySet(backend) || keys == DispatchKeySet({backend, autograd})) return keys;
  }
  return std::nullopt;
}

// Calls the op, redispatching with the plain key set where there is one.
template <typename Return, typename... Args, typename... Given>
Return dispatch(const c10::TypedOperatorHandle<Return(Args...)>& op, c10::DispatchKeySet tensors,
                const Given&... args) {
  if (const std::optional<c10::DispatchKeySet> keys = plain_keys(tensors)) return op.redispatch(*keys, args...);
  return op.call(args...);
}

// Whether `out` is the first n tensors of `shards` (an update in place): then the kernels take the
// outputs' records from the inputs', and they are not read twice.
bool is_prefix(TensorList out, TensorList shards) {
  if (out.size() > shards.size()) return false;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!out[i].is_same(shards[i])) return false;
  }
  return true;
}

// The records of an update's inputs and (unless they are the first vector's) outputs, read once and
// lent to the kernels for the duration of the call.
class UpdateRecords {
 public:
  UpdateRecords(const Borrowed& out, const Borrowed& shards)
      : in_(shards.tensors()),
        out_(is_prefix(out.tensors(), shards.tensors()) ? std::nullopt
                                                         : std::optional<Records>(std::in_place, out.tensors())),
        known_({&in_, out_ ? &*out_ : nullptr}) {}

  // The union of every tensor's dispatch key set.
  c10::DispatchKeySet keys() const { return in_.keys() | (out_ ? out_->keys() : c10::DispatchKeySet()); }

 private:
  const Records in_;
  const std::optional<Records> out_;
  const KnownRecords known_;
};

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

c10::string_view text(PyObject* obj) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj, &size);
  if (data == nullptr) throw python_error();
  return {data, static_cast<size_t>(size)};
}

const Tensor& tensor(PyObject* obj, const char* what) {
  TORCH_CHECK_TYPE(THPVariable_Check(obj), what, " must be a Tensor");
  return THPVariable_Unpack(obj);
}

std::optional<Tensor> optional_tensor(PyObject* obj, const char* what) {
  if (obj == Py_None) return std::nullopt;
  return tensor(obj, what);
}

double number(PyObject* obj) {
  const double value = PyFloat_AsDouble(obj);
  if (value == -1.0 && PyErr_Occurred()) throw python_error();
  return value;
}

PyObject* wrap(std::tuple<Tensor, Tensor> pair) {
  THPObjectPtr first(THPVariable_Wrap(std::get<0>(pair)));
  THPObjectPtr second(THPVariable_Wrap(std::get<1>(pair)));
  if (!first || !second) return nullptr;
  return PyTuple_Pack(2, first.get(), second.get());
}

// gram(vectors, dtype, backend) -> Tensor
PyObject* gram(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *vectors = nullptr, *dtype_obj = nullptr, *backend = nullptr;
  if (!PyArg_ParseTuple(args, "OOU", &vectors, &dtype_obj, &backend)) return nullptr;
  Borrowed shards;
  int64_t k = 0;
  if (shards.add_vectors(vectors, &k) == 0) Py_RETURN_NOTIMPLEMENTED;
  std::optional<at::ScalarType> dtype;
  if (dtype_obj != Py_None) {
    TORCH_CHECK_TYPE(THPDtype_Check(dtype_obj), "dtype must be a torch.dtype");
    dtype = reinterpret_cast<THPDtype*>(dtype_obj)->scalar_type;
  }
  static const auto call = op<Tensor(TensorList, int64_t, std::optional<at::ScalarType>, c10::string_view)>(
      "fastunlearn::gram");
  const c10::string_view name = text(backend);
  Tensor result;
  {
    pybind11::gil_scoped_release no_gil;
    const Records records(shards.tensors());
    const KnownRecords known({&records});
    result = dispatch(call, records.keys(), shards.tensors(), k, dtype, name);
  }
  return THPVariable_Wrap(std::move(result));
  END_HANDLE_TH_ERRORS
}

// combine_(out, weights, vectors, backend) -> None
PyObject* combine_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_obj = nullptr, *weights = nullptr, *vectors = nullptr, *backend = nullptr;
  if (!PyArg_ParseTuple(args, "OOOU", &out_obj, &weights, &vectors, &backend)) return nullptr;
  Borrowed shards, out;
  int64_t k = 0;
  if (shards.add_vectors(vectors, &k) == 0 || !out.add(out_obj) || !THPVariable_Check(weights)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto call = op<void(TensorList, const Tensor&, TensorList, int64_t, c10::string_view)>(
      "fastunlearn::combine_");
  const c10::string_view name = text(backend);
  {
    pybind11::gil_scoped_release no_gil;
    const Tensor& w = THPVariable_Unpack(weights);
    const UpdateRecords records(out, shards);
    const c10::DispatchKeySet keys = records.keys() | w.key_set();
    dispatch(call, keys, out.tensors(), w, shards.tensors(), k, name);
  }
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// project_(g, r, mode, eps, backend) -> Tensor (the stats)
PyObject* project_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *g_obj = nullptr, *r_obj = nullptr, *mode = nullptr, *eps = nullptr, *backend = nullptr;
  if (!PyArg_ParseTuple(args, "OOUOU", &g_obj, &r_obj, &mode, &eps, &backend)) return nullptr;
  Borrowed g, r;
  if (!g.add(g_obj) || !r.add(r_obj) || g.tensors().empty() || g.tensors().size() != r.tensors().size()) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto call = op<Tensor(TensorList, TensorList, c10::string_view, double, c10::string_view)>(
      "fastunlearn::project_");
  const c10::string_view when = text(mode), name = text(backend);
  const double epsilon = number(eps);
  Tensor stats;
  {
    pybind11::gil_scoped_release no_gil;
    const Records records(g.tensors(), r.tensors());
    const KnownRecords known({&records});
    stats = dispatch(call, records.keys(), g.tensors(), r.tensors(), when, epsilon, name);
  }
  return THPVariable_Wrap(std::move(stats));
  END_HANDLE_TH_ERRORS
}

// project_normal_(g, directions, eps, backend) -> Tensor (alpha)
PyObject* project_normal_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *g_obj = nullptr, *directions = nullptr, *eps = nullptr, *backend = nullptr;
  if (!PyArg_ParseTuple(args, "OOOU", &g_obj, &directions, &eps, &backend)) return nullptr;
  Borrowed g, rest;
  int64_t m = 0;
  const int64_t n = rest.add_vectors(directions, &m);
  if (n == 0 || !g.add(g_obj) || static_cast<int64_t>(g.tensors().size()) != n) Py_RETURN_NOTIMPLEMENTED;
  static const auto call = op<Tensor(TensorList, TensorList, int64_t, double, c10::string_view)>(
      "fastunlearn::project_normal_");
  const c10::string_view name = text(backend);
  const double epsilon = number(eps);
  Tensor alpha;
  {
    pybind11::gil_scoped_release no_gil;
    const Records records(g.tensors(), rest.tensors());
    const KnownRecords known({&records});
    alpha = dispatch(call, records.keys(), g.tensors(), rest.tensors(), m, epsilon, name);
  }
  return THPVariable_Wrap(std::move(alpha));
  END_HANDLE_TH_ERRORS
}

// pcgrad_(out, vectors, order, reduction, eps, backend, generator) -> (gram, weights)
PyObject* pcgrad_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_obj = nullptr, *vectors = nullptr, *order = nullptr, *reduction = nullptr, *eps = nullptr,
           *backend = nullptr, *generator = nullptr;
  if (!PyArg_ParseTuple(args, "OOOUOUO", &out_obj, &vectors, &order, &reduction, &eps, &backend, &generator)) {
    return nullptr;
  }
  Borrowed shards, out;
  int64_t k = 0;
  if (shards.add_vectors(vectors, &k) == 0 || !out.add(out_obj)) Py_RETURN_NOTIMPLEMENTED;
  static const auto call =
      op<std::tuple<Tensor, Tensor>(TensorList, TensorList, int64_t, const std::optional<Tensor>&, c10::string_view,
                                    double, c10::string_view, const std::optional<at::Generator>&)>(
          "fastunlearn::pcgrad_");
  const std::optional<Tensor> order_tensor = optional_tensor(order, "order");
  std::optional<at::Generator> gen;
  if (generator != Py_None) {
    TORCH_CHECK_TYPE(THPGenerator_Check(generator), "generator must be a torch.Generator");
    gen = reinterpret_cast<THPGenerator*>(generator)->cdata;
  }
  const c10::string_view how = text(reduction), name = text(backend);
  const double epsilon = number(eps);
  std::tuple<Tensor, Tensor> result;
  {
    pybind11::gil_scoped_release no_gil;
    const UpdateRecords records(out, shards);
    const c10::DispatchKeySet keys = records.keys() | (order_tensor ? order_tensor->key_set() : c10::DispatchKeySet());
    result = dispatch(call, keys, out.tensors(), shards.tensors(), k, order_tensor, how, epsilon, name, gen);
  }
  return wrap(std::move(result));
  END_HANDLE_TH_ERRORS
}

// aggregate_(out, vectors, weighting, eps, order, backend) -> (gram, weights)
PyObject* aggregate_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_obj = nullptr, *vectors = nullptr, *weighting = nullptr, *eps = nullptr, *order = nullptr,
           *backend = nullptr;
  if (!PyArg_ParseTuple(args, "OOUOOU", &out_obj, &vectors, &weighting, &eps, &order, &backend)) return nullptr;
  Borrowed shards, out;
  int64_t k = 0;
  if (shards.add_vectors(vectors, &k) == 0 || !out.add(out_obj)) Py_RETURN_NOTIMPLEMENTED;
  static const auto call =
      op<std::tuple<Tensor, Tensor>(TensorList, TensorList, int64_t, c10::string_view, double,
                                    const std::optional<Tensor>&, c10::string_view)>("fastunlearn::aggregate_");
  const std::optional<Tensor> order_tensor = optional_tensor(order, "order");
  const c10::string_view kind = text(weighting), name = text(backend);
  const double epsilon = number(eps);
  std::tuple<Tensor, Tensor> result;
  {
    pybind11::gil_scoped_release no_gil;
    const UpdateRecords records(out, shards);
    const c10::DispatchKeySet keys = records.keys() | (order_tensor ? order_tensor->key_set() : c10::DispatchKeySet());
    result = dispatch(call, keys, out.tensors(), shards.tensors(), k, kind, epsilon, order_tensor, name);
  }
  return wrap(std::move(result));
  END_HANDLE_TH_ERRORS
}

// The records of a fused optimizer step (parameters, gradients, up to two state lists), read once
// and lent to the kernels. A step whose parameters span devices is not taken (NotImplemented): the
// optimizer splits it into one call per device (fastunlearn/optim.py).
class StepRecords {
 public:
  StepRecords(const Borrowed& params, const Borrowed& grads, std::initializer_list<const Borrowed*> states)
      : params_(params.tensors()), grads_(grads.tensors()) {
    states_.reserve(states.size());
    for (const Borrowed* state : states) states_.emplace_back(state->tensors());
    known_.emplace(std::initializer_list<const Records*>{&params_, &grads_, states_.size() > 0 ? &states_[0] : nullptr,
                                                         states_.size() > 1 ? &states_[1] : nullptr});
  }

  bool one_device() const {
    for (size_t i = 1; i < params_.size(); ++i) {
      if (params_[i].device != params_[0].device) return false;
    }
    return true;
  }

  c10::DispatchKeySet keys(const Tensor& weights) const {
    c10::DispatchKeySet keys = params_.keys() | grads_.keys() | weights.key_set();
    for (const Records& state : states_) keys = keys | state.keys();
    return keys;
  }

 private:
  const Records params_, grads_;
  std::vector<Records> states_;
  std::optional<KnownRecords> known_;  // lent once states_ holds its records (the constructor body)
};

// sgd_step_(params, momentum_buffers, weights, vectors, lr, momentum, dampening, nesterov, weight_decay,
//           maximize, first_step, backend) -> None, or NotImplemented
PyObject* sgd_step_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *params_obj = nullptr, *buffers_obj = nullptr, *weights = nullptr, *vectors = nullptr, *backend = nullptr;
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  int nesterov = 0, maximize = 0, first_step = 0;
  if (!PyArg_ParseTuple(args, "OOOOdddpdppU", &params_obj, &buffers_obj, &weights, &vectors, &lr, &momentum,
                        &dampening, &nesterov, &weight_decay, &maximize, &first_step, &backend)) {
    return nullptr;
  }
  Borrowed params, buffers, grads;
  int64_t k = 0;
  if (!params.add(params_obj) || !buffers.add(buffers_obj) || grads.add_vectors(vectors, &k) == 0 ||
      !THPVariable_Check(weights)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto call = op<void(TensorList, TensorList, const Tensor&, TensorList, int64_t, double, double, double,
                                   bool, double, bool, bool, c10::string_view)>("fastunlearn::sgd_step_");
  const c10::string_view name = text(backend);
  bool one_device = true;
  {
    pybind11::gil_scoped_release no_gil;
    const Tensor& w = THPVariable_Unpack(weights);
    const StepRecords records(params, grads, {&buffers});
    one_device = records.one_device();
    if (one_device) {
      dispatch(call, records.keys(w), params.tensors(), buffers.tensors(), w, grads.tensors(), k, lr, momentum,
               dampening, nesterov != 0, weight_decay, maximize != 0, first_step != 0, name);
    }
  }
  if (!one_device) Py_RETURN_NOTIMPLEMENTED;
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// adamw_step_(params, exp_avgs, exp_avg_sqs, weights, vectors, lr, beta1, beta2, eps, weight_decay, step,
//             maximize, backend) -> None, or NotImplemented
PyObject* adamw_step_(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *params_obj = nullptr, *avgs_obj = nullptr, *sqs_obj = nullptr, *weights = nullptr, *vectors = nullptr,
           *backend = nullptr;
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  long long step = 0;
  int maximize = 0;
  if (!PyArg_ParseTuple(args, "OOOOOdddddLpU", &params_obj, &avgs_obj, &sqs_obj, &weights, &vectors, &lr, &beta1,
                        &beta2, &eps, &weight_decay, &step, &maximize, &backend)) {
    return nullptr;
  }
  Borrowed params, avgs, sqs, grads;
  int64_t k = 0;
  if (!params.add(params_obj) || !avgs.add(avgs_obj) || !sqs.add(sqs_obj) || grads.add_vectors(vectors, &k) == 0 ||
      !THPVariable_Check(weights)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  static const auto call =
      op<void(TensorList, TensorList, TensorList, const Tensor&, TensorList, int64_t, double, double, double, double,
              double, int64_t, bool, c10::string_view)>("fastunlearn::adamw_step_");
  const c10::string_view name = text(backend);
  bool one_device = true;
  {
    pybind11::gil_scoped_release no_gil;
    const Tensor& w = THPVariable_Unpack(weights);
    const StepRecords records(params, grads, {&avgs, &sqs});
    one_device = records.one_device();
    if (one_device) {
      dispatch(call, records.keys(w), params.tensors(), avgs.tensors(), sqs.tensors(), w, grads.tensors(), k, lr,
               beta1, beta2, eps, weight_decay, static_cast<int64_t>(step), maximize != 0, name);
    }
  }
  if (!one_device) Py_RETURN_NOTIMPLEMENTED;
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"gram", gram, METH_VARARGS, "torch.ops.fastunlearn.gram on nested lists of tensors."},
    {"combine_", combine_, METH_VARARGS, "torch.ops.fastunlearn.combine_ on nested lists of tensors."},
    {"project_", project_, METH_VARARGS, "torch.ops.fastunlearn.project_ on lists of tensors."},
    {"project_normal_", project_normal_, METH_VARARGS, "torch.ops.fastunlearn.project_normal_ on lists of tensors."},
    {"pcgrad_", pcgrad_, METH_VARARGS, "torch.ops.fastunlearn.pcgrad_ on nested lists of tensors."},
    {"aggregate_", aggregate_, METH_VARARGS, "torch.ops.fastunlearn.aggregate_ on nested lists of tensors."},
    {"sgd_step_", sgd_step_, METH_VARARGS, "torch.ops.fastunlearn.sgd_step_ on lists of tensors."},
    {"adamw_step_", adamw_step_, METH_VARARGS, "torch.ops.fastunlearn.adamw_step_ on lists of tensors."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMethodDef* entry_methods() { return methods; }

}  // namespace fastunlearn
