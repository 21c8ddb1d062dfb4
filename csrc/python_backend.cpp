// Backends written in Python (the torch reference, the Triton kernels) and the Python hooks of the
// op kernels: each is registered once from fastunlearn/_backend.py and called with the GIL taken.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>
#include <torch/csrc/utils/python_scalars.h>

#include <map>
#include <memory>
#include <mutex>

#include "backend.h"
#include "python_hooks.h"

namespace fastunlearn {
namespace {

// Registered callables live as long as the process (never released at interpreter exit).
struct Registry {
  std::mutex lock;
  std::map<std::string, std::unique_ptr<Backend>, std::less<>> backends;
  PyObject* resolver = nullptr;
  PyObject* weighting = nullptr;
};

Registry& registry() {
  static auto* r = new Registry();
  return *r;
}

PyObject* wrap(at::TensorList tensors) {
  THPObjectPtr list(PyList_New(static_cast<Py_ssize_t>(tensors.size())));
  if (!list) throw python_error();
  for (size_t i = 0; i < tensors.size(); ++i) {
    PyObject* item = THPVariable_Wrap(tensors[i]);
    if (!item) throw python_error();
    PyList_SET_ITEM(list.get(), static_cast<Py_ssize_t>(i), item);
  }
  return list.release();
}

// Calls `fn` with `args` (references stolen), the GIL held; a Python exception propagates unchanged.
THPObjectPtr call(PyObject* fn, std::initializer_list<PyObject*> args) {
  THPObjectPtr tuple(PyTuple_New(static_cast<Py_ssize_t>(args.size())));
  Py_ssize_t i = 0;
  for (PyObject* arg : args) {
    if (!arg) throw python_error();
    PyTuple_SET_ITEM(tuple.get(), i++, arg);
  }
  THPObjectPtr result(PyObject_Call(fn, tuple.get(), nullptr));
  if (!result) throw python_error();
  return result;
}

at::Tensor tensor_of(THPObjectPtr obj) {
  TORCH_CHECK_TYPE(THPVariable_Check(obj.get()), "fastunlearn: a Python backend returned a non-tensor");
  return THPVariable_Unpack(obj.get());
}

PyObject* py_int(int64_t v) { return PyLong_FromLongLong(v); }
PyObject* py_float(double v) { return PyFloat_FromDouble(v); }
PyObject* py_bool(bool v) { return PyBool_FromLong(v); }

class PythonBackend final : public Backend {
 public:
  PythonBackend(PyObject* gram, PyObject* combine, PyObject* sgd, PyObject* adamw, PyObject* token_stats)
      : gram_(gram), combine_(combine), sgd_(sgd), adamw_(adamw), token_stats_(token_stats) {
    for (PyObject* fn : {gram, combine, sgd, adamw, token_stats}) Py_INCREF(fn);
  }

  at::Tensor gram(at::TensorList shards, int64_t k, const Records* /*records*/) const override {
    pybind11::gil_scoped_acquire gil;
    return tensor_of(call(gram_, {wrap(shards), py_int(k)}));
  }
  void combine(at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t k,
               const Records* /*out_records*/, const Records* /*records*/) const override {
    pybind11::gil_scoped_acquire gil;
    call(combine_, {wrap(outs), THPVariable_Wrap(weights), wrap(shards), py_int(k)});
  }
  void sgd_step(at::TensorList params, at::TensorList momentum_buffers, const at::Tensor& weights,
                at::TensorList grads, int64_t k, double lr, double momentum, double dampening, bool nesterov,
                double weight_decay, bool maximize, bool first_step) const override {
    pybind11::gil_scoped_acquire gil;
    call(sgd_, {wrap(params), wrap(momentum_buffers), THPVariable_Wrap(weights), wrap(grads), py_int(k), py_float(lr),
                py_float(momentum), py_float(dampening), py_bool(nesterov), py_float(weight_decay), py_bool(maximize),
                py_bool(first_step)});
  }
  void adamw_step(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  const at::Tensor& weights, at::TensorList grads, int64_t k, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step, bool maximize) const override {
    pybind11::gil_scoped_acquire gil;
    call(adamw_, {wrap(params), wrap(exp_avgs), wrap(exp_avg_sqs), THPVariable_Wrap(weights), wrap(grads), py_int(k),
                  py_float(lr), py_float(beta1), py_float(beta2), py_float(eps), py_float(weight_decay), py_int(step),
                  py_bool(maximize)});
  }
  void token_stats_update(const at::Tensor& state, const at::Tensor& best, const at::Tensor& logits, int64_t start,
                          const at::Tensor& targets) const override {
    pybind11::gil_scoped_acquire gil;
    call(token_stats_, {THPVariable_Wrap(state), THPVariable_Wrap(best), THPVariable_Wrap(logits), py_int(start),
                        THPVariable_Wrap(targets)});
  }

 private:
  PyObject *gram_, *combine_, *sgd_, *adamw_, *token_stats_;
};

class NativeBackend final : public Backend {
 public:
  explicit NativeBackend(NativeKernels kernels) : k_(kernels) {}
  at::Tensor gram(at::TensorList shards, int64_t k, const Records* records) const override {
    return k_.gram(shards, k, records);
  }
  void combine(at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t k,
               const Records* out_records, const Records* records) const override {
    k_.combine(outs, weights, shards, k, out_records, records);
  }
  void sgd_step(at::TensorList params, at::TensorList momentum_buffers, const at::Tensor& weights,
                at::TensorList grads, int64_t k, double lr, double momentum, double dampening, bool nesterov,
                double weight_decay, bool maximize, bool first_step) const override {
    k_.sgd_step(params, momentum_buffers, weights, grads, k, lr, momentum, dampening, nesterov, weight_decay, maximize,
                first_step);
  }
  void adamw_step(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  const at::Tensor& weights, at::TensorList grads, int64_t k, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step, bool maximize) const override {
    k_.adamw_step(params, exp_avgs, exp_avg_sqs, weights, grads, k, lr, beta1, beta2, eps, weight_decay, step,
                  maximize);
  }
  std::optional<at::Tensor> aggregate(at::TensorList out, at::TensorList shards, int64_t k, weightings::Kind kind,
                                      double eps, const std::optional<at::Tensor>& order) const override {
    return k_.aggregate != nullptr ? k_.aggregate(out, shards, k, kind, eps, order) : std::nullopt;
  }
  void token_stats_update(const at::Tensor& state, const at::Tensor& best, const at::Tensor& logits, int64_t start,
                          const at::Tensor& targets) const override {
    TORCH_CHECK_VALUE(k_.token_stats_update != nullptr, "backend 'cuda' has no token_stats kernel; on CUDA tensors "
                      "token_stats runs on backend 'triton' or 'torch'");
    k_.token_stats_update(state, best, logits, start, targets);
  }

 private:
  NativeKernels k_;
};

std::string resolve(const at::Device& device, c10::string_view op) {
  PyObject* resolver = registry().resolver;
  TORCH_CHECK(resolver != nullptr, "fastunlearn: backend \"auto\" needs `import fastunlearn` first");
  pybind11::gil_scoped_acquire gil;
  THPObjectPtr name(call(resolver, {PyUnicode_FromString(device.str().c_str()),
                                    PyUnicode_FromStringAndSize(op.data(), static_cast<Py_ssize_t>(op.size()))}));
  const char* text = PyUnicode_AsUTF8(name.get());
  if (!text) throw python_error();
  return text;
}

}  // namespace

const Backend& backend_for(c10::string_view name, const at::Device& device, c10::string_view op) {
  if (name == "cpp") {
    TORCH_CHECK_VALUE(device.is_cpu(), "backend 'cpp' runs on cpu tensors, not on ", device.type(), " tensors");
    static const NativeBackend cpp(cpu_kernels());
    return cpp;
  }
#ifdef FASTUNLEARN_WITH_CUDA
  if (name == "cuda") {
    TORCH_CHECK_VALUE(device.is_cuda(), "backend 'cuda' runs on cuda tensors, not on ", device.type(), " tensors");
    static const NativeBackend cuda(cuda_kernels());
    return cuda;
  }
#endif
  if (name == "auto") return backend_for(resolve(device, op), device);
  Registry& r = registry();
  std::lock_guard<std::mutex> guard(r.lock);
  const auto found = r.backends.find(name);
  TORCH_CHECK_VALUE(found != r.backends.end(), "unknown backend '", std::string(name), "' for ", device, " tensors");
  return *found->second;
}

at::Tensor python_weights(const std::string& weighting, const at::Tensor& gram, double eps,
                          const std::optional<at::Tensor>& order) {
  PyObject* fn = registry().weighting;
  TORCH_CHECK(fn != nullptr, "fastunlearn: the weightings are registered by `import fastunlearn`");
  pybind11::gil_scoped_acquire gil;
  PyObject* order_obj = order.has_value() ? THPVariable_Wrap(*order) : (Py_INCREF(Py_None), Py_None);
  return tensor_of(call(fn, {PyUnicode_FromString(weighting.c_str()), THPVariable_Wrap(gram), py_float(eps), order_obj}));
}

PyObject* register_backend(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* name = nullptr;
  PyObject *gram = nullptr, *combine = nullptr, *sgd = nullptr, *adamw = nullptr, *token_stats = nullptr;
  if (!PyArg_ParseTuple(args, "sOOOOO", &name, &gram, &combine, &sgd, &adamw, &token_stats)) return nullptr;
  Registry& r = registry();
  std::lock_guard<std::mutex> guard(r.lock);
  r.backends[name] = std::make_unique<PythonBackend>(gram, combine, sgd, adamw, token_stats);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* set_hooks(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *resolver = nullptr, *weighting = nullptr;
  if (!PyArg_ParseTuple(args, "OO", &resolver, &weighting)) return nullptr;
  Py_INCREF(resolver);
  Py_INCREF(weighting);
  registry().resolver = resolver;
  registry().weighting = weighting;
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

}  // namespace fastunlearn
