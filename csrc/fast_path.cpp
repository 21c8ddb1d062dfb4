#include "fast_path.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/COW.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
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

// Strided tensors whose memory holds their values as they are: anything else (DTensor, fake and
// functional tensors, vmap batches and grad wrappers, lazily negated or conjugated views, zero
// tensors without memory, sparse and nested tensors) takes the ordinary route, where the dispatcher
// resolves it. Reads the key set only, so it is safe on any tensor before its sizes or data are touched.
bool plain_tensor(const at::Tensor& t) {
  using c10::DispatchKey;
  static const c10::DispatchKeySet not_plain({DispatchKey::Python, DispatchKey::FuncTorchBatched,
                                              DispatchKey::FuncTorchGradWrapper, DispatchKey::Functionalize,
                                              DispatchKey::Negative, DispatchKey::Conjugate, DispatchKey::ZeroTensor});
  return !t.key_set().has_any(not_plain) && !t.is_nested() && t.layout() == at::kStrided;
}

// Separately allocated gradients keep each tensor's metadata on its own heap page, between the
// data blocks: every visit of 20,000 of them costs a cache and a TLB miss each. So a call visits
// each tensor once: the Python objects in list order (prefetched ahead), then the TensorImpls and
// StorageImpls split among the intra-op threads (prefetched ahead in each thread's range), so
// that the misses overlap; what the checks and kernels need is copied into a compact record.
constexpr Py_ssize_t kPrefetchObjects = 24;
constexpr int64_t kPrefetchImpls = 12, kPrefetchStorages = 6;
// Lists shorter than this are read by one thread: waking the others costs more.
constexpr int64_t kParallelMetadata = 2048;
constexpr int64_t kInlineDims = 5;

// One tensor's metadata, as the fast path uses it.
struct Meta {
  const void* data;
  int64_t numel;
  int64_t dim;  // sizes are kept inline up to kInlineDims; beyond, compared through the tensor
  std::array<int64_t, kInlineDims> sizes;
  at::ScalarType dtype;
  bool plain, cpu, requires_grad, inference, contiguous;
  bool copy_on_write;  // writing it needs the ordinary route, whose data_ptr() materialises the copy

  bool same_shape(const Meta& other, const at::Tensor& t, const at::Tensor& other_t) const {
    if (dim != other.dim) return false;
    if (dim > kInlineDims) return t.sizes() == other_t.sizes();
    return std::equal(sizes.begin(), sizes.begin() + dim, other.sizes.begin());
  }
};

Meta meta_of(const at::Tensor& t) {
  Meta m{};
  m.plain = plain_tensor(t) && t.has_storage();
  if (!m.plain) return m;
  m.data = t.const_data_ptr();
  m.numel = t.numel();
  m.plain = m.data != nullptr || m.numel == 0;
  m.copy_on_write = c10::impl::cow::is_cow_data_ptr(t.storage().data_ptr());
  m.dim = t.dim();
  if (m.dim <= kInlineDims) std::copy(t.sizes().begin(), t.sizes().end(), m.sizes.begin());
  m.dtype = t.scalar_type();
  m.cpu = t.device().is_cpu();
  m.requires_grad = t.requires_grad();
  m.inference = t.is_inference();
  m.contiguous = t.is_contiguous();
  return m;
}

void prefetch_impl(const at::Tensor& t) {
  const char* impl = reinterpret_cast<const char*>(t.unsafeGetTensorImpl());
  for (int line = 0; line < 4; ++line) __builtin_prefetch(impl + 64 * line);
}

// The items of a list or tuple, borrowed from it.
struct Items {
  PyObject* const* data;
  Py_ssize_t size;
};

Items items_of(PyObject* sequence) {
  TORCH_CHECK_TYPE(PyList_CheckExact(sequence) || PyTuple_CheckExact(sequence),
                   "fastunlearn: expected a list or tuple");
  return {PySequence_Fast_ITEMS(sequence), PySequence_Fast_GET_SIZE(sequence)};
}

bool same_items(PyObject* a, PyObject* b) {
  const Items x = items_of(a), y = items_of(b);
  return x.size == y.size && std::equal(x.data, x.data + x.size, y.data);
}

// The tensors of one or more Python lists (or tuples), concatenated and borrowed, with their
// metadata: a strong reference to each item keeps it alive (also while the GIL is released,
// whatever other threads do to the lists), and no TensorImpl's reference count is touched. (No
// new Python container: a GC-tracked one of 20,000 items costs the collector.)
class BorrowedTensors {
 public:
  explicit BorrowedTensors(const std::vector<PyObject*>& sequences) {
    size_t total = 0;
    for (PyObject* sequence : sequences) total += items_of(sequence).size;
    refs_.objects.reserve(total);
    refs_.tensors.reserve(total);
    for (PyObject* sequence : sequences) borrow(items_of(sequence));
    read_metadata();
  }

  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;

  const std::vector<at::Tensor>& tensors() const { return refs_.tensors; }
  at::TensorList tensors(size_t count) const { return at::TensorList(refs_.tensors.data(), count); }
  const std::vector<Meta>& metas() const { return metas_; }
  size_t size() const { return refs_.tensors.size(); }
  bool all_contiguous(size_t count) const {
    return std::all_of(metas_.begin(), metas_.begin() + count, [](const Meta& m) { return m.contiguous; });
  }

 private:
  // Released by its own destructor, so that a constructor that throws half-way lets go of what it took.
  struct References {
    std::vector<PyObject*> objects;
    std::vector<at::Tensor> tensors;
    ~References() {
      for (at::Tensor& t : tensors) t.unsafeReleaseTensorImpl();
      for (PyObject* item : objects) Py_DECREF(item);
    }
  };

  void borrow(Items items) {
    for (Py_ssize_t i = 0; i < items.size; ++i) {
      if (i + kPrefetchObjects < items.size) __builtin_prefetch(items.data[i + kPrefetchObjects]);
      PyObject* item = items.data[i];
      // A type check that runs no Python code (THPVariable_Check may call __instancecheck__).
      TORCH_CHECK_TYPE(PyObject_TypeCheck(item, reinterpret_cast<PyTypeObject*>(THPVariableClass)),
                       "fastunlearn: element ", i, " is not a tensor");
      Py_INCREF(item);
      refs_.objects.push_back(item);
      c10::TensorImpl* impl = THPVariable_Unpack(item).unsafeGetTensorImpl();
      refs_.tensors.emplace_back(c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::reclaim(impl));
    }
  }

  // Reads tensor fields only (no Python object): safe on the intra-op threads, and nothing in it throws.
  void read_metadata() {
    const std::vector<at::Tensor>& t = refs_.tensors;
    const auto size = static_cast<int64_t>(t.size());
    metas_.resize(t.size());
    at::parallel_for(0, size, kParallelMetadata, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (i + kPrefetchImpls < end) prefetch_impl(t[i + kPrefetchImpls]);
        if (i + kPrefetchStorages < end) {
          const c10::TensorImpl* impl = t[i + kPrefetchStorages].unsafeGetTensorImpl();
          if (impl->has_storage()) __builtin_prefetch(impl->unsafe_storage().unsafeGetStorageImpl());
        }
        metas_[i] = meta_of(t[i]);
      }
    });
  }

  References refs_;
  std::vector<Meta> metas_;
};

// K vectors: a list or tuple of K lists or tuples of n tensors each (held while the call runs).
struct Vectors {
  std::vector<PyObject*> sequences;
  std::vector<THPObjectPtr> held;
  int64_t k;

  explicit Vectors(PyObject* vectors) {
    const Items items = items_of(vectors);
    sequences.assign(items.data, items.data + items.size);
    k = static_cast<int64_t>(sequences.size());
    for (PyObject* sequence : sequences) {
      Py_INCREF(sequence);
      held.emplace_back(sequence);
    }
    for (PyObject* sequence : sequences) {
      TORCH_CHECK_VALUE(items_of(sequence).size == items_of(sequences[0]).size,
                        "fastunlearn: vectors differ in length");
    }
  }
};

// K vectors of n CPU shards: one supported dtype, shapes equal at each shard index, and no shard
// that needs autograd while grad mode is on (the fast path has no backward; outputs that require
// grad may only be written under no_grad). What fastunlearn/_validate.py checks, in C++.
int64_t check_vectors(const BorrowedTensors& shards, int64_t k) {
  TORCH_CHECK_VALUE(k > 0 && shards.size() > 0 && shards.size() % k == 0, "fastunlearn: bad shard list");
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const std::vector<Meta>& m = shards.metas();
  TORCH_CHECK_TYPE(m[0].plain && supported_dtype(m[0].dtype), "fastunlearn: dtype");
  const at::ScalarType dtype = m[0].dtype;
  const bool grad_mode = at::GradMode::is_enabled();
  for (size_t s = 0; s < m.size(); ++s) {
    TORCH_CHECK_VALUE(m[s].plain && m[s].cpu && m[s].dtype == dtype, "fastunlearn: shard ", s);
    TORCH_CHECK_VALUE(!grad_mode || !m[s].requires_grad, "fastunlearn: shard ", s, " requires grad");
    const size_t ref = s % n;
    TORCH_CHECK_VALUE(m[s].same_shape(m[ref], shards.tensors()[s], shards.tensors()[ref]), "fastunlearn: shard ", s);
  }
  return n;
}

// The n outputs of a combine: the first n tensors of `owner` (its own list, or the first vector's
// shards for an update in place).
struct Outputs {
  const BorrowedTensors& owner;
  int64_t n;

  const Meta* metas() const { return owner.metas().data(); }
  at::TensorList tensors() const { return owner.tensors(n); }
  bool contiguous() const { return owner.all_contiguous(n); }
};

// The outputs in `out_obj`: the first vector's shards when it holds the very same tensors (an
// update in place, whose metadata is then not read twice), else its own tensors, held by `own`.
Outputs outputs_of(PyObject* out_obj, const Vectors& vectors, const BorrowedTensors& shards, int64_t n,
                   std::optional<BorrowedTensors>& own) {
  TORCH_CHECK_VALUE(items_of(out_obj).size == n, "fastunlearn: out");
  if (same_items(out_obj, vectors.sequences[0])) return {shards, n};
  own.emplace(std::vector<PyObject*>{out_obj});
  return {*own, n};
}

// Outputs pair with the first vector: CPU, its dtype and shapes, and writable (see check_vectors;
// an inference tensor only inside inference mode, as for torch's own in-place ops).
void check_outputs(const Outputs& outs, const BorrowedTensors& shards) {
  const bool grad_mode = at::GradMode::is_enabled();
  const bool inference_mode = c10::InferenceMode::is_enabled();
  const Meta* o = outs.metas();
  const std::vector<Meta>& m = shards.metas();
  for (int64_t i = 0; i < outs.n; ++i) {
    TORCH_CHECK_VALUE(o[i].plain && o[i].cpu && o[i].dtype == m[0].dtype, "fastunlearn: out ", i);
    TORCH_CHECK_VALUE(!grad_mode || !o[i].requires_grad, "fastunlearn: out ", i, " requires grad");
    TORCH_CHECK_VALUE(inference_mode || !o[i].inference, "fastunlearn: out ", i, " is an inference tensor");
    TORCH_CHECK_VALUE(!o[i].copy_on_write, "fastunlearn: out ", i, " is a lazy copy");
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
bool contiguous_overlap(const Meta* outs, int64_t n, const std::vector<Meta>& inputs, int64_t itemsize) {
  std::vector<Span> spans;
  spans.reserve(n + inputs.size());
  const auto add = [&](const Meta& m, bool is_out, int64_t index) {
    const auto begin = reinterpret_cast<uintptr_t>(m.data);
    if (m.numel > 0) spans.push_back({begin, begin + static_cast<uintptr_t>(m.numel * itemsize), is_out, index});
  };
  for (int64_t i = 0; i < n; ++i) add(outs[i], true, i);
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].data != outs[i % n].data) add(inputs[i], false, static_cast<int64_t>(i));
  }
  return !sweep_spans(spans, [&](int64_t out, int64_t in) {
            return out == in % n && outs[out].data == inputs[in].data;
          }).empty();
}

// Whether the combine may run on raw pointers; raises on an overlap the op does not allow.
bool check_combine(const Outputs& outs, const BorrowedTensors& shards) {
  const bool contiguous = outs.contiguous() && shards.all_contiguous(shards.size());
  if (contiguous) {
    const auto itemsize = static_cast<int64_t>(c10::elementSize(shards.metas()[0].dtype));
    TORCH_CHECK_VALUE(!contiguous_overlap(outs.metas(), outs.n, shards.metas(), itemsize), "fastunlearn: overlap");
  } else {
    TORCH_CHECK_VALUE(find_overlap(outs.tensors(), shards.tensors(), outs.n).empty(), "fastunlearn: overlap");
  }
  return contiguous;
}

void check_weights(const at::Tensor& weights, int64_t k) {
  TORCH_CHECK_VALUE(plain_tensor(weights) && weights.dim() == 1 && weights.size(0) == k &&
                        supported_dtype(weights.scalar_type()) && weights.device().is_cpu() &&
                        !(at::GradMode::is_enabled() && weights.requires_grad()),
                    "fastunlearn: weights");
}

const at::Tensor& tensor_arg(PyObject* obj, const char* what) {
  TORCH_CHECK_TYPE(THPVariable_Check(obj), "fastunlearn: ", what, " is not a tensor");
  return THPVariable_Unpack(obj);
}

// The Gram matrix in the accumulation dtype, with the GIL released.
at::Tensor run_gram(const BorrowedTensors& shards, int64_t k) {
  pybind11::gil_scoped_release no_gil;
  if (!shards.all_contiguous(shards.size())) return gram_cpu(shards.tensors(), k);
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const std::vector<const void*> ptrs = pointers_of(shards.metas());
  const at::ScalarType dtype = shards.metas()[0].dtype;
  return gram_pointers(ptrs.data(), plan_of(shards.metas(), n), k, dtype).to(accumulation_dtype(dtype));
}

// Inference tensors have no version counter (they are written only inside inference mode, which
// check_outputs ensured on this thread: the intra-op threads do not see that thread-local mode).
void bump_versions(const Outputs& outs) {
  const at::TensorList t = outs.tensors();
  at::parallel_for(0, outs.n, kParallelMetadata, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + kPrefetchImpls < end) __builtin_prefetch(t[i + kPrefetchImpls].unsafeGetTensorImpl());
      c10::TensorImpl* impl = t[i].unsafeGetTensorImpl();
      if (impl->version_counter().enabled()) impl->bump_version();
    }
  });
}

void write_combine(const Outputs& outs, const at::Tensor& weights, const BorrowedTensors& shards, int64_t k,
                   bool contiguous) {
  if (!contiguous) return combine_cpu(outs.tensors(), weights.reshape({1, -1}), shards.tensors(), k);
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  std::vector<void*> out_ptrs(outs.n);
  std::transform(outs.metas(), outs.metas() + outs.n, out_ptrs.begin(),
                 [](const Meta& m) { return const_cast<void*>(m.data); });
  const std::vector<const void*> in_ptrs = pointers_of(shards.metas());
  combine_pointers(out_ptrs.data(), 1, in_ptrs.data(), plan_of(shards.metas(), outs.n), k, w.const_data_ptr<double>(),
                   shards.metas()[0].dtype);
}

// Every check has passed: the outputs are written (GIL released), then their versions bumped. An
// error once writing may have begun (out of memory) surfaces as SystemError, which the Python side
// does not answer with the ordinary route: that would apply the update a second time.
void run_combine(const Outputs& outs, const at::Tensor& weights, const BorrowedTensors& shards, int64_t k,
                 bool contiguous) {
  std::string failure;
  {
    pybind11::gil_scoped_release no_gil;
    try {
      write_combine(outs, weights, shards, k, contiguous);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  if (!failure.empty()) {
    PyErr_Format(PyExc_SystemError, "fastunlearn: combine_ failed after writing part of its outputs: %s",
                 failure.c_str());
    throw python_error();
  }
  bump_versions(outs);
}

// gram(vectors): the K x K Gram matrix in the accumulation dtype.
PyObject* gram_vectors(PyObject* /*self*/, PyObject* vectors_obj) {
  HANDLE_TH_ERRORS
  const Vectors vectors(vectors_obj);
  const BorrowedTensors shards(vectors.sequences);
  check_vectors(shards, vectors.k);
  return THPVariable_Wrap(run_gram(shards, vectors.k));
  END_HANDLE_TH_ERRORS
}

// combine_vectors(out, weights, vectors): out[i] = sum_k weights[k] * vectors[k][i]; out may be
// the first vector (in place).
PyObject* combine_vectors(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_obj = nullptr, *weights_obj = nullptr, *vectors_obj = nullptr;
  if (!PyArg_ParseTuple(args, "OOO", &out_obj, &weights_obj, &vectors_obj)) return nullptr;
  const Vectors vectors(vectors_obj);
  const BorrowedTensors shards(vectors.sequences);
  const int64_t n = check_vectors(shards, vectors.k);
  const at::Tensor& weights = tensor_arg(weights_obj, "weights");
  check_weights(weights, vectors.k);
  std::optional<BorrowedTensors> own_outs;
  const Outputs outs = outputs_of(out_obj, vectors, shards, n, own_outs);
  check_outputs(outs, shards);
  run_combine(outs, weights, shards, vectors.k, check_combine(outs, shards));
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// gram_combine_vectors(out, vectors, weights_of) -> (gram, weights): the Gram pass, weights =
// weights_of(gram) (a (K,) tensor), then the combine pass into out, each shard's metadata read
// once. Every check of both passes runs before weights_of is called and before anything is written.
PyObject* gram_combine_vectors(PyObject* /*self*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *out_obj = nullptr, *vectors_obj = nullptr, *weights_of = nullptr;
  if (!PyArg_ParseTuple(args, "OOO", &out_obj, &vectors_obj, &weights_of)) return nullptr;
  const Vectors vectors(vectors_obj);
  const BorrowedTensors shards(vectors.sequences);
  const int64_t n = check_vectors(shards, vectors.k);
  std::optional<BorrowedTensors> own_outs;
  const Outputs outs = outputs_of(out_obj, vectors, shards, n, own_outs);
  check_outputs(outs, shards);
  const bool contiguous = check_combine(outs, shards);

  THPObjectPtr gram(THPVariable_Wrap(run_gram(shards, vectors.k)));
  if (!gram) return nullptr;
  THPObjectPtr weights_obj(PyObject_CallOneArg(weights_of, gram.get()));
  if (!weights_obj) return nullptr;
  const at::Tensor& weights = tensor_arg(weights_obj.get(), "weights");
  check_weights(weights, vectors.k);
  run_combine(outs, weights, shards, vectors.k, contiguous);
  return PyTuple_Pack(2, gram.get(), weights_obj.get());
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"gram_vectors", gram_vectors, METH_O, "Gram matrix of K shard lists (fast path)."},
    {"combine_vectors", combine_vectors, METH_VARARGS, "combine_ on shard lists (fast path)."},
    {"gram_combine_vectors", gram_combine_vectors, METH_VARARGS,
     "A Gram pass, weights from it, then a combine pass, on shard lists (fast path)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMethodDef* fast_path_methods() { return methods; }

}  // namespace fastunlearn
