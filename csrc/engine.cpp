#include "engine.h"

#include <ATen/Dispatch.h>

#include <cmath>
#include <vector>

#include "common/dtypes.h"
#include "common/weightings.h"

namespace fastunlearn {
namespace engine {
namespace {

bool uniform_dtype(const Records& shards, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    if (shards[i].dtype != shards[0].dtype) return false;
  }
  return true;
}

// The shards of each dtype, vector-major like the whole list, in order of first appearance.
struct DtypeGroup {
  at::ScalarType dtype;
  std::vector<int64_t> index;  // shard indices i (of vector 0) in this group
  std::vector<at::Tensor> of(at::TensorList list, int64_t n) const {
    std::vector<at::Tensor> out;
    const int64_t vectors = static_cast<int64_t>(list.size()) / n;
    out.reserve(vectors * index.size());
    for (int64_t v = 0; v < vectors; ++v) {
      for (int64_t i : index) out.push_back(list[v * n + i]);
    }
    return out;
  }
};

std::vector<DtypeGroup> groups_of(const Records& shards, int64_t n) {
  std::vector<DtypeGroup> groups;
  for (int64_t i = 0; i < n; ++i) {
    const at::ScalarType dtype = shards[i].dtype;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const DtypeGroup& g) { return g.dtype == dtype; });
    if (it == groups.end()) it = groups.insert(groups.end(), DtypeGroup{dtype, {}});
    it->index.push_back(i);
  }
  return groups;
}

// The CPU scalar stage: the shared definitions (common/weightings.h) on host values.
template <typename acc_t>
void cpu_weights(Weighting weighting, const at::Tensor& gram, double eps, const std::optional<at::Tensor>& order,
                 at::Tensor& out) {
  const int64_t k = gram.size(0);
  std::vector<acc_t> scratch(weightings::scratch_size(k));
  at::Tensor o;
  if (order.has_value()) o = order->to(at::kLong).contiguous();
  weightings::apply<acc_t>(weighting, gram.const_data_ptr<acc_t>(), k, o.defined() ? o.const_data_ptr<int64_t>() : nullptr,
                           eps, out.data_ptr<acc_t>(), scratch.data());
}

const char* name_of(Weighting weighting) {
  switch (weighting) {
    case weightings::kProjectAlways: return "always";
    case weightings::kProjectConflict: return "conflict";
    case weightings::kProjectAscentConflict: return "ascent_conflict";
    case weightings::kSpanComplement: return "span";
    case weightings::kPCGradSum: return "pcgrad_sum";
    default: return "pcgrad_mean";
  }
}

}  // namespace

at::ScalarType accumulation_dtype_of(const Records& shards, int64_t n) {
  at::ScalarType acc = accumulation_dtype(shards[0].dtype);
  for (int64_t i = 1; i < n && acc != at::kDouble; ++i) acc = accumulation_dtype(shards[i].dtype);
  return acc;
}

at::ScalarType result_dtype_of(const Records& shards, int64_t n) {
  if (uniform_dtype(shards, n)) return result_dtype(shards[0].dtype);
  for (int64_t i = 0; i < n; ++i) {
    if (shards[i].dtype == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

at::Tensor gram(const Backend& backend, const Records& shards, int64_t k) {
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  if (uniform_dtype(shards, n)) return backend.gram(shards.tensors(), k, &shards);
  at::Tensor total;
  for (const DtypeGroup& group : groups_of(shards, n)) {
    const at::Tensor part = backend.gram(group.of(shards.tensors(), n), k, nullptr).to(at::kDouble);
    total = total.defined() ? total.add_(part) : part.clone();
  }
  return total.to(accumulation_dtype_of(shards, n));
}

void combine(const Backend& backend, const Records& outs, const at::Tensor& weights, const Records& shards,
             int64_t k) {
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  if (uniform_dtype(shards, n)) return backend.combine(outs.tensors(), weights, shards.tensors(), k, &outs, &shards);
  for (const DtypeGroup& group : groups_of(shards, n)) {
    backend.combine(group.of(outs.tensors(), n), weights, group.of(shards.tensors(), n), k, nullptr, nullptr);
  }
}

Weighting projection(c10::string_view mode) {
  if (mode == "always") return weightings::kProjectAlways;
  if (mode == "conflict") return weightings::kProjectConflict;
  TORCH_CHECK_VALUE(mode == "ascent_conflict", "unknown mode '", std::string(mode),
                    "'; expected one of 'always', 'conflict', 'ascent_conflict'");
  return weightings::kProjectAscentConflict;
}

Weighting pcgrad(c10::string_view reduction) {
  if (reduction == "sum") return weightings::kPCGradSum;
  TORCH_CHECK_VALUE(reduction == "mean", "unknown reduction '", std::string(reduction),
                    "'; expected one of 'sum', 'mean'");
  return weightings::kPCGradMean;
}

Weighting parse(c10::string_view name) {
  if (name == "span") return weightings::kSpanComplement;
  if (name.substr(0, 7) == "pcgrad_") return pcgrad(name.substr(7));
  return projection(name);
}

void check_arity(Weighting weighting, int64_t k) {
  if (weighting <= weightings::kProjectAscentConflict) {
    TORCH_CHECK_VALUE(k == 2, "a projection weighting takes two vectors [g, r], got ", k);
  } else if (weighting == weightings::kSpanComplement) {
    TORCH_CHECK_VALUE(k >= 2, "the span-complement weighting takes g and at least one direction, got ", k,
                      " vector");
  }
}

bool needs_order(Weighting weighting) {
  return weighting == weightings::kPCGradSum || weighting == weightings::kPCGradMean;
}

at::Tensor weights(Weighting weighting, const at::Tensor& gram, double eps, const std::optional<at::Tensor>& order) {
  if (!gram.device().is_cpu()) return python_weights(name_of(weighting), gram, eps, order);
  const at::Tensor g = gram.contiguous();
  at::Tensor out = at::empty({g.size(0)}, g.options());
  if (g.scalar_type() == at::kDouble) {
    cpu_weights<double>(weighting, g, eps, order, out);
  } else {
    cpu_weights<float>(weighting, g, eps, order, out);
  }
  return out;
}

Result aggregate(const Backend& backend, const Records& out, const Records& shards, int64_t k, Weighting weighting,
                 double eps, const std::optional<at::Tensor>& order) {
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const int64_t num_stats = weightings::stats_size(weighting, k);
  if (uniform_dtype(shards, n)) {
    if (std::optional<at::Tensor> packed =
            backend.aggregate(out.tensors(), shards.tensors(), k, weighting, eps, order)) {
      return {packed->slice(0, 0, k * k).view({k, k}), packed->slice(0, k * k, k * k + k),
              packed->slice(0, k * k + k, k * k + k + num_stats)};
    }
  }
  Result result;
  result.gram = gram(backend, shards, k);
  result.weights = weights(weighting, result.gram, eps, order);
  combine(backend, out, result.weights.reshape({1, k}), shards, k);
  if (result.gram.device().is_cpu()) {  // a few host values: no chain of small ops
    result.stats = at::empty({num_stats}, result.gram.options());
    AT_DISPATCH_FLOATING_TYPES(result.gram.scalar_type(), "engine_stats", [&] {
      weightings::stats<scalar_t>(weighting, result.gram.const_data_ptr<scalar_t>(), k,
                                  result.weights.const_data_ptr<scalar_t>(), result.stats.data_ptr<scalar_t>());
    });
  } else if (weighting <= weightings::kProjectAscentConflict) {
    const at::Tensor& g = result.gram;
    result.stats = at::stack({g[0][1], g[0][0], g[1][1], -result.weights[1]});
  } else {
    result.stats = -result.weights.slice(0, 1);
  }
  return result;
}

}  // namespace engine
}  // namespace fastunlearn
