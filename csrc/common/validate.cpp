#include "common/validate.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <sstream>

#include "common/dtypes.h"
#include "common/overlap.h"

namespace fastunlearn {
namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream out;
  out << "(";
  for (int64_t d = 0; d < t.dim(); ++d) out << (d ? ", " : "") << t.size(d);
  out << (t.dim() == 1 ? ",)" : ")");
  return out.str();
}

std::string layout_name(at::Layout layout) {
  switch (layout) {
    case at::kSparse: return "torch.sparse_coo";
    case at::kSparseCsr: return "torch.sparse_csr";
    case at::kSparseCsc: return "torch.sparse_csc";
    case at::kSparseBsr: return "torch.sparse_bsr";
    case at::kSparseBsc: return "torch.sparse_bsc";
    case at::kJagged: return "torch.jagged";
    default: return "torch.strided";
  }
}

const char* const kNotDifferentiable =
    " requires grad; in-place fastunlearn ops are not differentiable (pass .grad tensors or detached copies, or "
    "call under torch.no_grad())";

bool is_subclass(const at::Tensor& t) { return t.key_set().has(c10::DispatchKey::Python); }

}  // namespace

std::string indexed(const char* list, int64_t k) { return std::string(list) + "[" + std::to_string(k) + "]"; }

std::string python_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return "torch.float64";
    case at::kFloat: return "torch.float32";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kHalf: return "torch.float16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

int64_t check_vectors(at::TensorList shards, int64_t k, const VectorNames& name) {
  TORCH_CHECK_VALUE(k > 0, "vectors is empty: at least one vector is needed");
  TORCH_CHECK_VALUE(shards.size() % k == 0, "fastunlearn: ", shards.size(), " shards do not split into ", k,
                    " vectors");
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  TORCH_CHECK_VALUE(n > 0, name(0), " has no shards");
  const at::Device device = shards[0].device();
  for (int64_t s = 0; s < static_cast<int64_t>(shards.size()); ++s) {
    const at::Tensor& t = shards[s];
    const int64_t v = s / n, i = s % n;
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, name(v), " shard ", i, " has layout ", layout_name(t.layout()),
                     "; fastunlearn ops take dense (strided) tensors");
    TORCH_CHECK_TYPE(supported_dtype(t.scalar_type()), name(v), " shard ", i, " has dtype ",
                     python_name(t.scalar_type()), "; fastunlearn ops take floating-point tensors");
    TORCH_CHECK_VALUE(t.device() == device, name(v), " shard ", i, " is on ", t.device(), " but ", name(0),
                      " shard 0 is on ", device);
    if (v == 0) continue;
    const at::Tensor& ref = shards[i];
    TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name(v), " shard ", i, " has dtype ",
                     python_name(t.scalar_type()), " but ", name(0), " shard ", i, " has ",
                     python_name(ref.scalar_type()));
    TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name(v), " shard ", i, " has shape ", shape_of(t), " but ", name(0),
                      " shard ", i, " has ", shape_of(ref));
  }
  return n;
}

void check_outputs_match(at::TensorList outs, at::TensorList first, const char* what, const std::string& first_name) {
  TORCH_CHECK_VALUE(outs.size() == first.size(), what, " has ", outs.size(), " shards but ", first_name, " has ",
                    first.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    const at::Tensor& t = outs[i];
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, what, " shard ", i, " has layout ", layout_name(t.layout()),
                     "; fastunlearn ops take dense (strided) tensors");
    TORCH_CHECK_VALUE(t.device() == first[i].device(), what, " shard ", i, " is on ", t.device(), " but ",
                      first_name, " shard ", i, " is on ", first[i].device());
    TORCH_CHECK_TYPE(t.scalar_type() == first[i].scalar_type(), what, " shard ", i, " has dtype ",
                     python_name(t.scalar_type()), " but ", first_name, " shard ", i, " has ",
                     python_name(first[i].scalar_type()));
    TORCH_CHECK_VALUE(t.sizes() == first[i].sizes(), what, " shard ", i, " has shape ", shape_of(t), " but ",
                      first_name, " shard ", i, " has ", shape_of(first[i]));
  }
}

void check_writable(at::TensorList outs, const char* what) {
  if (!c10::InferenceMode::is_enabled()) {
    for (size_t i = 0; i < outs.size(); ++i) {
      TORCH_CHECK_VALUE(!outs[i].is_inference(), what, " shard ", i,
                        " is an inference tensor, which may only be updated in place inside torch.inference_mode() "
                        "(clone it first to get a normal tensor)");
    }
  }
  if (at::GradMode::is_enabled()) {
    for (size_t i = 0; i < outs.size(); ++i) {
      TORCH_CHECK_VALUE(!outs[i].requires_grad(), what, " shard ", i, kNotDifferentiable);
    }
  }
}

void check_not_differentiated(at::TensorList shards, int64_t n, const VectorNames& name) {
  if (!at::GradMode::is_enabled()) return;
  for (size_t s = 0; s < shards.size(); ++s) {
    TORCH_CHECK_VALUE(!shards[s].requires_grad(), name(s / n), " shard ", s % n, kNotDifferentiable);
  }
}

void check_weights(const at::Tensor& weights, int64_t k, const at::Device& device) {
  TORCH_CHECK_TYPE(supported_dtype(weights.scalar_type()), "weights must be floating point, got ",
                   python_name(weights.scalar_type()));
  TORCH_CHECK_VALUE(weights.dim() == 1 && weights.size(0) == k, "weights must have shape (", k,
                    ",) (one per vector), got ", shape_of(weights));
  TORCH_CHECK_VALUE(weights.device() == device, "weights are on ", weights.device(), " but the vectors are on ",
                    device);
  TORCH_CHECK_VALUE(!(weights.requires_grad() && at::GradMode::is_enabled()),
                    "weights requires grad; combine_ is not differentiable (detach them or call under "
                    "torch.no_grad())");
}

void check_overlaps(at::TensorList outs, at::TensorList inputs, int64_t n, const char* what,
                    const VectorNames& input_name) {
  const std::vector<int64_t> found = find_overlap(outs, inputs, n);
  if (found.empty()) return;
  TORCH_CHECK_VALUE(found[0] != 0, what, " shard ", found[1],
                    " has elements that share memory (e.g. an expand()ed view)");
  if (found[3] == 1) {
    const int64_t a = std::min(found[1], found[2]) % n, b = std::max(found[1], found[2]) % n;
    TORCH_CHECK_VALUE(false, what, " shard ", a, " and ", what, " shard ", b,
                      " overlap in memory; outputs must not share memory");
  }
  TORCH_CHECK_VALUE(false, what, " shard ", found[1] % n, " overlaps ", input_name(found[2] / n), " shard ",
                    found[2] % n,
                    " in memory; an output may only be the very same tensor as the input at its own shard index");
}

void check_no_mixed_subclass(at::TensorList shards, int64_t n, const VectorNames& name) {
  if (shards.empty()) return;
  const bool first = is_subclass(shards[0]);
  for (size_t s = 1; s < shards.size(); ++s) {
    TORCH_CHECK_TYPE(is_subclass(shards[s]) == first, name(s / n), " shard ", s % n, " is ",
                     first ? "a plain tensor among tensor subclasses" : "a tensor subclass (e.g. a DTensor) among plain tensors",
                     "; pass every shard as a DTensor or as a local tensor");
  }
}

}  // namespace fastunlearn
