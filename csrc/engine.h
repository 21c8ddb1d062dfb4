// The one engine under every op: a Gram pass, a weighting (the K x K scalar stage), a combine pass.
// Shards of one vector may differ in dtype (bf16 weights beside fp32 adapters): each dtype's shards
// are reduced at their own accumulation dtype and the partial Gram matrices meet in fp64.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "backend.h"
#include "common/records.h"
#include "common/weightings.h"

namespace fastunlearn {
namespace engine {

// The accumulation dtype of a call over these shards (the wider rule where dtypes differ).
at::ScalarType accumulation_dtype_of(const Records& shards, int64_t n);
// What gram returns by default: the input dtype (never below fp32; fp64 if any shard is fp64).
at::ScalarType result_dtype_of(const Records& shards, int64_t n);

// K x K Gram matrix of K vectors of n shards (validated), in accumulation_dtype_of.
at::Tensor gram(const Backend& backend, const Records& shards, int64_t k);

// outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i] (validated; weights M x K).
void combine(const Backend& backend, const Records& outs, const at::Tensor& weights, const Records& shards, int64_t k);

// The built-in weightings: (K,) combine weights from the K x K Gram, on the Gram's device and in
// its dtype. Plain C++ on CPU; elsewhere the Python definitions in fastunlearn/weighting.py.
using Weighting = weightings::Kind;
Weighting projection(c10::string_view mode);
Weighting pcgrad(c10::string_view reduction);
// The names fastunlearn/weighting.py gives them ("always", ..., "span", "pcgrad_sum", "pcgrad_mean").
Weighting parse(c10::string_view name);
bool needs_order(Weighting weighting);
// A projection takes exactly two vectors [g, r]; the span complement at least two [g, r_1, ...].
void check_arity(Weighting weighting, int64_t k);
at::Tensor weights(Weighting weighting, const at::Tensor& gram, double eps, const std::optional<at::Tensor>& order);

// What an engine run computed, in the accumulation dtype: the K x K Gram, the K weights, and the
// weighting's stats (weightings::stats: ProjectionStats, or alpha for the span complement).
struct Result {
  at::Tensor gram, weights, stats;
};

// Gram pass, weighting, combine pass into `out` (all validated). The backend's fused path where it
// has one (CUDA: three launches), else the three stages above.
Result aggregate(const Backend& backend, const Records& out, const Records& shards, int64_t k, Weighting weighting,
                 double eps, const std::optional<at::Tensor>& order);

}  // namespace engine
}  // namespace fastunlearn
