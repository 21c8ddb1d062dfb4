#include "engine.h"

#include <cmath>
#include <vector>

#include "common/dtypes.h"

namespace fastunlearn {
namespace engine {
namespace {

bool uniform_dtype(at::TensorList shards, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    if (shards[i].scalar_type() != shards[0].scalar_type()) return false;
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

std::vector<DtypeGroup> groups_of(at::TensorList shards, int64_t n) {
  std::vector<DtypeGroup> groups;
  for (int64_t i = 0; i < n; ++i) {
    const at::ScalarType dtype = shards[i].scalar_type();
    auto it = std::find_if(groups.begin(), groups.end(), [&](const DtypeGroup& g) { return g.dtype == dtype; });
    if (it == groups.end()) it = groups.insert(groups.end(), DtypeGroup{dtype, {}});
    it->index.push_back(i);
  }
  return groups;
}

// ---- The CPU scalar stage: the same arithmetic as fastunlearn/weighting.py, on host values. ----

template <typename acc_t>
void projection_weights(Weighting weighting, const acc_t* g, double eps, acc_t* w) {
  const acc_t dot = g[1], coef = dot / (g[3] + static_cast<acc_t>(eps));
  bool project = true;
  // A NaN dot compares false; keep its NaN coefficient so the damage shows in g.
  if (weighting == Weighting::kProjectConflict) project = dot < 0 || std::isnan(dot);
  if (weighting == Weighting::kProjectAscentConflict) project = dot > 0 || std::isnan(dot);
  w[0] = 1;
  w[1] = project ? -coef : acc_t(0);
}

// Gram-Schmidt in Gram space (see SpanComplement in fastunlearn/weighting.py).
template <typename acc_t>
void span_weights(const acc_t* g, int64_t k, double eps, acc_t* w) {
  const int64_t m = k - 1;
  const auto d = [&](int64_t a, int64_t b) { return g[(a + 1) * k + (b + 1)]; };  // directions' Gram
  const acc_t tolerance = 1000 * std::numeric_limits<acc_t>::epsilon();
  std::vector<acc_t> basis(m * m, 0), norms(m, 1), row(m);
  for (int64_t j = 0; j < m; ++j) {
    std::fill(row.begin(), row.end(), acc_t(0));
    row[j] = 1;
    for (int64_t a = 0; a < j; ++a) {  // row -= sum_a (basis_a . D e_j / norm_a) basis_a
      acc_t along = 0;
      for (int64_t b = 0; b < m; ++b) along += basis[a * m + b] * d(b, j);
      const acc_t c = along / norms[a];
      for (int64_t b = 0; b < m; ++b) row[b] -= c * basis[a * m + b];
    }
    acc_t sq = 0;
    for (int64_t a = 0; a < m; ++a) {
      acc_t da = 0;
      for (int64_t b = 0; b < m; ++b) da += d(a, b) * row[b];
      sq += row[a] * da;
    }
    if (sq > tolerance * d(j, j)) {
      std::copy(row.begin(), row.end(), basis.begin() + j * m);
      norms[j] = sq;
    }
  }
  w[0] = 1;
  for (int64_t b = 0; b < m; ++b) w[b + 1] = 0;
  for (int64_t a = 0; a < m; ++a) {
    acc_t along = 0;  // basis_a . g
    for (int64_t b = 0; b < m; ++b) along += basis[a * m + b] * g[b + 1];
    const acc_t c = along / (norms[a] + static_cast<acc_t>(eps));
    for (int64_t b = 0; b < m; ++b) w[b + 1] -= c * basis[a * m + b];
  }
}

// PCGrad's sequential projections in Gram space (see PCGrad in fastunlearn/weighting.py).
template <typename acc_t>
void pcgrad_weights(Weighting weighting, const acc_t* g, int64_t k, const int64_t* order, double eps, acc_t* w) {
  std::vector<acc_t> coeffs(k * k, 0), step(k);
  for (int64_t i = 0; i < k; ++i) coeffs[i * k + i] = 1;
  for (int64_t t = 0; t < k; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      const int64_t partner = order[i * k + t];
      acc_t dot = 0;
      for (int64_t c = 0; c < k; ++c) dot += coeffs[i * k + c] * g[c * k + partner];
      // A NaN dot is projected like a conflict, so the NaN reaches the weights.
      step[i] = (dot < 0 || std::isnan(dot)) ? dot / (g[partner * k + partner] + static_cast<acc_t>(eps)) : acc_t(0);
    }
    for (int64_t i = 0; i < k; ++i) coeffs[i * k + order[i * k + t]] -= step[i];
  }
  for (int64_t c = 0; c < k; ++c) {
    acc_t sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += coeffs[i * k + c];
    w[c] = weighting == Weighting::kPCGradMean ? sum / static_cast<acc_t>(k) : sum;
  }
}

template <typename acc_t>
void cpu_weights(Weighting weighting, const at::Tensor& gram, double eps, const std::optional<at::Tensor>& order,
                 at::Tensor& out) {
  const acc_t* g = gram.const_data_ptr<acc_t>();
  acc_t* w = out.data_ptr<acc_t>();
  const int64_t k = gram.size(0);
  switch (weighting) {
    case Weighting::kSpanComplement: return span_weights(g, k, eps, w);
    case Weighting::kPCGradSum:
    case Weighting::kPCGradMean: {
      const at::Tensor o = order->to(at::kLong).contiguous();
      return pcgrad_weights(weighting, g, k, o.const_data_ptr<int64_t>(), eps, w);
    }
    default: return projection_weights(weighting, g, eps, w);
  }
}

const char* name_of(Weighting weighting) {
  switch (weighting) {
    case Weighting::kProjectAlways: return "always";
    case Weighting::kProjectConflict: return "conflict";
    case Weighting::kProjectAscentConflict: return "ascent_conflict";
    case Weighting::kSpanComplement: return "span";
    case Weighting::kPCGradSum: return "pcgrad_sum";
    default: return "pcgrad_mean";
  }
}

}  // namespace

at::ScalarType accumulation_dtype_of(at::TensorList shards, int64_t n) {
  at::ScalarType acc = accumulation_dtype(shards[0].scalar_type());
  for (int64_t i = 1; i < n; ++i) acc = acc == at::kDouble ? acc : accumulation_dtype(shards[i].scalar_type());
  return acc;
}

at::ScalarType result_dtype_of(at::TensorList shards, int64_t n) {
  if (uniform_dtype(shards, n)) return result_dtype(shards[0].scalar_type());
  for (int64_t i = 0; i < n; ++i) {
    if (shards[i].scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

at::Tensor gram(const Backend& backend, at::TensorList shards, int64_t k) {
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  if (uniform_dtype(shards, n)) return backend.gram(shards, k);
  at::Tensor total;
  for (const DtypeGroup& group : groups_of(shards, n)) {
    const at::Tensor part = backend.gram(group.of(shards, n), k).to(at::kDouble);
    total = total.defined() ? total.add_(part) : part.clone();
  }
  return total.to(accumulation_dtype_of(shards, n));
}

void combine(const Backend& backend, at::TensorList outs, const at::Tensor& weights, at::TensorList shards,
             int64_t k) {
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  if (uniform_dtype(shards, n)) return backend.combine(outs, weights, shards, k);
  for (const DtypeGroup& group : groups_of(shards, n)) {
    backend.combine(group.of(outs, n), weights, group.of(shards, n), k);
  }
}

Weighting projection(c10::string_view mode) {
  if (mode == "always") return Weighting::kProjectAlways;
  if (mode == "conflict") return Weighting::kProjectConflict;
  TORCH_CHECK_VALUE(mode == "ascent_conflict", "unknown mode '", std::string(mode),
                    "'; expected one of 'always', 'conflict', 'ascent_conflict'");
  return Weighting::kProjectAscentConflict;
}

Weighting pcgrad(c10::string_view reduction) {
  if (reduction == "sum") return Weighting::kPCGradSum;
  TORCH_CHECK_VALUE(reduction == "mean", "unknown reduction '", std::string(reduction),
                    "'; expected one of 'sum', 'mean'");
  return Weighting::kPCGradMean;
}

Weighting parse(c10::string_view name) {
  if (name == "span") return Weighting::kSpanComplement;
  if (name.substr(0, 7) == "pcgrad_") return pcgrad(name.substr(7));
  return projection(name);
}

bool needs_order(Weighting weighting) {
  return weighting == Weighting::kPCGradSum || weighting == Weighting::kPCGradMean;
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

}  // namespace engine
}  // namespace fastunlearn
