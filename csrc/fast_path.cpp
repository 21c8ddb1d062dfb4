#include "fast_path.h"

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <array>
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

// Separately allocated gradients keep each tensor's metadata on its own heap page, between the
// data blocks: every visit of 20,000 of them costs a cache and a TLB miss each. So a list is
// visited once, with the metadata prefetched a few tensors ahead (the object, its TensorImpl,
// its StorageImpl) so that the misses overlap, and what the checks and kernels need is copied into
// a compact record per tensor that later passes read instead.
constexpr Py_ssize_t kPrefetchObjects = 24, kPrefetchImpls = 12, kPrefetchStorages = 6;
constexpr int64_t kInlineDims = 5;

const at::Tensor* tensor_of(PyObject* item) {
  return THPVariable_Check(item) ? &THPVariable_Unpack(item) : nullptr;
}

void prefetch_metadata(PyObject* const* items, Py_ssize_t i, Py_ssize_t size) {
  if (i + kPrefetchObjects < size) __builtin_prefetch(items[i + kPrefetchObjects]);
  if (i + kPrefetchImpls < size) {
    if (const at::Tensor* t = tensor_of(items[i + kPrefetchImpls])) {
      const char* impl = reinterpret_cast<const char*>(t->unsafeGetTensorImpl());
      for (int line = 0; line < 4; ++line) __builtin_prefetch(impl + 64 * line);
    }
  }
  if (i + kPrefetchStorages < size) {
    const at::Tensor* t = tensor_of(items[i + kPrefetchStorages]);
    if (t != nullptr && t->has_storage()) {
      __builtin_prefetch(t->unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl());
    }
  }
}

// One tensor's metadata, as the fast path uses it.
struct Meta {
  const void* data;
  int64_t numel;
  int64_t dim;  // sizes are kept inline up to kInlineDims; beyond, compared through the tensor
  std::array<int64_t, kInlineDims> sizes;
  at::ScalarType dtype;
  bool cpu, requires_grad, contiguous;

  bool same_shape(const Meta& other, const at::Tensor& t, const at::Tensor& other_t) const {
    if (dim != other.dim) return false;
    if (dim > kInlineDims) return t.sizes() == other_t.sizes();
    return std::equal(sizes.begin(), sizes.begin() + dim, other.sizes.begin());
  }
};

Meta meta_of(const at::Tensor& t) {
  Meta m{};
  m.data = t.has_storage() ? t.const_data_ptr() : nullptr;
  m.numel = t.numel();
  m.dim = t.dim();
  if (m.dim <= kInlineDims) std::copy(t.sizes().begin(), t.sizes().end(), m.sizes.begin());
  m.dtype = t.scalar_type();
  m.cpu = t.device().is_cpu();
  m.requires_grad = t.requires_grad();
  m.contiguous = t.is_contiguous();
  return m;
}

// The tensors of a Python list, borrowed, with their metadata: a strong reference to each item
// keeps it alive (also while the GIL is released, whatever other threads do to the list), and no
// TensorImpl's reference count is touched. (No tuple: a GC-tracked container of 20,000 items
// costs the collector.)
class BorrowedTensors {
 public:
  explicit BorrowedTensors(PyObject* list) {
    TORCH_CHECK_TYPE(PyList_Check(list), "fastunlearn: expected a list of tensors");
    const Py_ssize_t size = PyList_GET_SIZE(list);
    PyObject* const* items = &PyList_GET_ITEM(list, 0);
    metas_.reserve(size);
    for (Py_ssize_t i = 0; i < size; ++i) {
      prefetch_metadata(items, i, size);
      const at::Tensor* t = tensor_of(items[i]);
      TORCH_CHECK_TYPE(t != nullptr && plain_tensor(*t), "fastunlearn: element ", i, " is not a plain tensor");
      metas_.push_back(meta_of(*t));
    }
    objects_.assign(items, items + size);
    for (PyObject* item : objects_) Py_INCREF(item);
    tensors_.reserve(size);
    for (PyObject* item : objects_) {
      c10::TensorImpl* impl = THPVariable_Unpack(item).unsafeGetTensorImpl();
      tensors_.emplace_back(c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::reclaim(impl));
    }
  }
  ~BorrowedTensors() {
    for (at::Tensor& t : tensors_) t.unsafeReleaseTensorImpl();
    for (PyObject* item : objects_) Py_DECREF(item);
  }
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;

  const std::vector<at::Tensor>& tensors() const { return tensors_; }
  const std::vector<Meta>& metas() const { return metas_; }
  size_t size() const { return tensors_.size(); }
  bool all_contiguous() const {
    return std::all_of(metas_.begin(), metas_.end(), [](const Meta& m) { return m.contiguous; });
  }

 private:
  std::vector<PyObject*> objects_;
  std::vector<at::Tensor> tensors_;
  std::vector<Meta> metas_;
};

// K vectors of n CPU shards: one supported dtype, shapes equal at each shard index, and no shard
// that needs autograd while grad mode is on (the fast path has no backward; outputs that require
// grad may only be written under no_grad). What fastunlearn/_validate.py checks, in C++.
void check_vectors(const BorrowedTensors& shards, int64_t k, bool allow_grad) {
  TORCH_CHECK_VALUE(k > 0 && shards.size() > 0 && shards.size() % k == 0, "fastunlearn: bad shard list");
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const std::vector<Meta>& m = shards.metas();
  const at::ScalarType dtype = m[0].dtype;
  TORCH_CHECK_TYPE(supported_dtype(dtype), "fastunlearn: dtype");
  const bool grad_mode = at::GradMode::is_enabled();
  for (size_t s = 0; s < m.size(); ++s) {
    TORCH_CHECK_VALUE(m[s].cpu && m[s].dtype == dtype, "fastunlearn: shard ", s);
    TORCH_CHECK_VALUE(allow_grad || !grad_mode || !m[s].requires_grad, "fastunlearn: shard ", s, " requires grad");
    const size_t ref = s % n;
    TORCH_CHECK_VALUE(m[s].same_shape(m[ref], shards.tensors()[s], shards.tensors()[ref]), "fastunlearn: shard ", s);
  }
}

// Outputs pair with the first vector: CPU, its dtype and shapes, and writable (see check_vectors).
void check_outputs(const BorrowedTensors& outs, const BorrowedTensors& shards) {
  const bool grad_mode = at::GradMode::is_enabled();
  const std::vector<Meta>& o = outs.metas();
  const std::vector<Meta>& m = shards.metas();
  for (size_t i = 0; i < o.size(); ++i) {
    TORCH_CHECK_VALUE(o[i].cpu && o[i].dtype == m[0].dtype, "fastunlearn: out ", i);
    TORCH_CHECK_VALUE(!grad_mode || !o[i].requires_grad, "fastunlearn: out ", i, " requires grad");
    TORCH_CHECK_VALUE(o[i].same_shape(m[i], outs.tensors()[i], shards.tensors()[i]), "fastunlearn: out ", i);
  }
}

ChunkPlan plan_of(const std::vector<Meta>& metas, int64_t n) {
  ChunkPlan plan;
  plan.offsets.reserve(n + 1);
  plan.offsets.push_back(0);
  for (int64_t i = 0; i < n; ++i) plan.offsets.push_back(plan.offsets.back() + metas[i].numel);
  return plan;
}

std::vector<const void*> pointers_of(const std::vector<Meta>& metas) {
  std::vector<const void*> ptrs(metas.size());
  std::transform(metas.begin(), metas.end(), ptrs.begin(), [](const Meta& m) { return m.data; });
  return ptrs;
}

// Contiguous outputs and inputs of equal shapes: an output may only meet an input by being its
// very memory at the same shard index (find_overlap's rule, on the records).
bool contiguous_overlap(const std::vector<Meta>& outs, const std::vector<Meta>& inputs, int64_t n, int64_t itemsize) {
  std::vector<Span> spans;
  spans.reserve(outs.size() + inputs.size());
  const auto add = [&](const Meta& m, bool is_out, int64_t index) {
    const auto begin = reinterpret_cast<uintptr_t>(m.data);
    if (m.numel > 0) spans.push_back({begin, begin + static_cast<uintptr_t>(m.numel * itemsize), is_out, index});
  };
  for (size_t i = 0; i < outs.size(); ++i) add(outs[i], true, static_cast<int64_t>(i));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].data != outs[i % n].data) add(inputs[i], false, static_cast<int64_t>(i));
  }
  return !sweep_spans(spans, [&](int64_t out, int64_t in) {
            return out == in % n && outs[out].data == inputs[in].data;
          }).empty();
}

PyObject* gram_list(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* list = nullptr;
  Py_ssize_t k = 0;
  if (!PyArg_ParseTuple(args, "On", &list, &k)) return nullptr;
  const BorrowedTensors shards(list);
  check_vectors(shards, k, /*allow_grad=*/false);
  if (!shards.all_contiguous()) return THPVariable_Wrap(gram_cpu(shards.tensors(), k));
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const std::vector<const void*> ptrs = pointers_of(shards.metas());
  const at::ScalarType dtype = shards.metas()[0].dtype;
  at::Tensor result = gram_pointers(ptrs.data(), plan_of(shards.metas(), n), k, dtype);
  return THPVariable_Wrap(result.to(accumulation_dtype(dtype)));
  END_HANDLE_TH_ERRORS
}

void bump_versions(const BorrowedTensors& outs) {
  const std::vector<at::Tensor>& t = outs.tensors();
  for (size_t i = 0; i < t.size(); ++i) {
    if (i + kPrefetchImpls < t.size()) __builtin_prefetch(t[i + kPrefetchImpls].unsafeGetTensorImpl());
    t[i].unsafeGetTensorImpl()->bump_version();
  }
}

// out[i] = sum_k weights[k] * vectors[k][i]; outs may be the first vector's shards (in place).
PyObject* combine_list(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_list = nullptr, *list = nullptr, *weights_obj = nullptr;
  Py_ssize_t k = 0;
  if (!PyArg_ParseTuple(args, "OOOn", &out_list, &weights_obj, &list, &k)) return nullptr;
  const BorrowedTensors outs(out_list), shards(list);
  TORCH_CHECK_TYPE(THPVariable_Check(weights_obj), "fastunlearn: weights");
  const at::Tensor& weights = THPVariable_Unpack(weights_obj);
  TORCH_CHECK_VALUE(weights.dim() == 1 && weights.size(0) == k && supported_dtype(weights.scalar_type()) &&
                        weights.device().is_cpu() && plain_tensor(weights),
                    "fastunlearn: weights");
  check_vectors(shards, k, /*allow_grad=*/true);
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  TORCH_CHECK_VALUE(static_cast<int64_t>(outs.size()) == n, "fastunlearn: out");
  check_outputs(outs, shards);
  const bool contiguous = outs.all_contiguous() && shards.all_contiguous();
  if (contiguous) {
    const int64_t itemsize = static_cast<int64_t>(c10::elementSize(shards.metas()[0].dtype));
    TORCH_CHECK_VALUE(!contiguous_overlap(outs.metas(), shards.metas(), n, itemsize), "fastunlearn: overlap");
  } else {
    TORCH_CHECK_VALUE(find_overlap(outs.tensors(), shards.tensors(), n).empty(), "fastunlearn: overlap");
  }
  {
    pybind11::gil_scoped_release no_gil;
    if (contiguous) {
      const at::Tensor w = weights.to(at::kDouble).contiguous();
      std::vector<void*> out_ptrs(outs.size());
      std::transform(outs.metas().begin(), outs.metas().end(), out_ptrs.begin(),
                     [](const Meta& m) { return const_cast<void*>(m.data); });
      const std::vector<const void*> in_ptrs = pointers_of(shards.metas());
      combine_pointers(out_ptrs.data(), 1, in_ptrs.data(), plan_of(shards.metas(), n), k, w.const_data_ptr<double>(),
                       shards.metas()[0].dtype);
    } else {
      combine_cpu(outs.tensors(), weights.reshape({1, -1}), shards.tensors(), k);
    }
  }
  bump_versions(outs);
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
