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

int64_t check_vectors(const Records& shards, int64_t k, const VectorNames& name) {
  TORCH_CHECK_VALUE(k > 0, "vectors is empty: at least one vector is needed");
  TORCH_CHECK_VALUE(shards.size() % k == 0, "fastunlearn: ", shards.size(), " shards do not split into ", k,
                    " vectors");
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  TORCH_CHECK_VALUE(n > 0, name(0), " has no shards");
  const at::TensorList t = shards.tensors();
  const at::Device device = shards[0].device;
  for (int64_t s = 0; s < static_cast<int64_t>(shards.size()); ++s) {
    const Record& r = shards[s];
    const int64_t v = s / n, i = s % n;
    TORCH_CHECK_TYPE(r.layout == at::kStrided, name(v), " shard ", i, " has layout ", layout_name(r.layout),
                     "; fastunlearn ops take dense (strided) tensors");
    TORCH_CHECK_TYPE(supported_dtype(r.dtype), name(v), " shard ", i, " has dtype ", python_name(r.dtype),
                     "; fastunlearn ops take floating-point tensors");
    TORCH_CHECK_VALUE(r.device == device, name(v), " shard ", i, " is on ", r.device, " but ", name(0),
                      " shard 0 is on ", device);
    if (v == 0) continue;
    TORCH_CHECK_TYPE(r.dtype == shards[i].dtype, name(v), " shard ", i, " has dtype ", python_name(r.dtype), " but ",
                     name(0), " shard ", i, " has ", python_name(shards[i].dtype));
    TORCH_CHECK_VALUE(shards.same_shape(s, shards, i), name(v), " shard ", i, " has shape ", shape_of(t[s]), " but ",
                      name(0), " shard ", i, " has ", shape_of(t[i]));
  }
  return n;
}

void check_outputs_match(const Records& outs, const Records& shards, const char* what, const std::string& first_name) {
  const at::TensorList o = outs.tensors(), t = shards.tensors();
  for (size_t i = 0; i < outs.size(); ++i) {
    const Record& r = outs[i];
    TORCH_CHECK_TYPE(r.layout == at::kStrided, what, " shard ", i, " has layout ", layout_name(r.layout),
                     "; fastunlearn ops take dense (strided) tensors");
    TORCH_CHECK_VALUE(r.device == shards[i].device, what, " shard ", i, " is on ", r.device, " but ", first_name,
                      " shard ", i, " is on ", shards[i].device);
    TORCH_CHECK_TYPE(r.dtype == shards[i].dtype, what, " shard ", i, " has dtype ", python_name(r.dtype), " but ",
                     first_name, " shard ", i, " has ", python_name(shards[i].dtype));
    TORCH_CHECK_VALUE(outs.same_shape(i, shards, i), what, " shard ", i, " has shape ", shape_of(o[i]), " but ",
                      first_name, " shard ", i, " has ", shape_of(t[i]));
  }
}

void check_writable(const Records& outs, const char* what) {
  const bool inference_mode = c10::InferenceMode::is_enabled(), grad_mode = at::GradMode::is_enabled();
  for (size_t i = 0; i < outs.size(); ++i) {
    TORCH_CHECK_VALUE(inference_mode || !outs[i].inference, what, " shard ", i,
                      " is an inference tensor, which may only be updated in place inside torch.inference_mode() "
                      "(clone it first to get a normal tensor)");
    TORCH_CHECK_VALUE(!grad_mode || !outs[i].requires_grad, what, " shard ", i, kNotDifferentiable);
  }
}

void check_not_differentiated(const Records& shards, size_t begin, int64_t n, const VectorNames& name) {
  if (!at::GradMode::is_enabled()) return;
  for (size_t s = begin; s < shards.size(); ++s) {
    TORCH_CHECK_VALUE(!shards[s].requires_grad, name(s / n), " shard ", s % n, kNotDifferentiable);
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


void check_overlaps(const Records& outs, const Records& inputs, int64_t n, const char* what,
                    const VectorNames& input_name) {
  const std::vector<int64_t> found = outs.flat() && inputs.flat() ? find_flat_overlap(outs, inputs, n)
                                                                  : find_overlap(outs.tensors(), inputs.tensors(), n);
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

}  // namespace fastunlearn
