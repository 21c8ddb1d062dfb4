// The built-in weightings' scalar stage, written once for the CPU (engine.cpp) and the CUDA finish
// kernel (cuda/gram.cu): plain host/device functions on a K x K Gram in the accumulation type.
// fastunlearn/weighting.py holds the same definitions in torch ops (the specification, and what
// runs on other devices and for user-written weightings). No torch header: nvcc compiles this bare.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FU_HOST_DEVICE __host__ __device__
#else
#define FU_HOST_DEVICE
#endif

namespace fastunlearn {
namespace weightings {

enum Kind : int {
  kProjectAlways = 0,
  kProjectConflict = 1,
  kProjectAscentConflict = 2,
  kSpanComplement = 3,
  kPCGradSum = 4,
  kPCGradMean = 5,
};

template <typename T> struct Epsilon;
template <> struct Epsilon<double> { static constexpr double value = 2.220446049250313e-16; };
template <> struct Epsilon<float> { static constexpr float value = 1.1920928955078125e-07f; };

template <typename T>
FU_HOST_DEVICE inline bool is_nan(T x) { return x != x; }

// w = [1, -c]: g - c r, c = (g.r) / (|r|^2 + eps), or 0 where the mode does not project. A NaN dot
// projects, so the damage shows in g.
template <typename T>
FU_HOST_DEVICE void projection(int kind, const T* g, double eps, T* w) {
  const T dot = g[1], coef = dot / (g[3] + static_cast<T>(eps));
  bool project = true;
  if (kind == kProjectConflict) project = dot < 0 || is_nan(dot);
  if (kind == kProjectAscentConflict) project = dot > 0 || is_nan(dot);
  w[0] = 1;
  w[1] = project ? -coef : T(0);
}

// w = [1, -alpha]: g minus its component in the span of the k - 1 directions, by Gram-Schmidt in
// Gram space; a direction already in the span (its orthogonal part within 1000 ulps of its squared
// norm) gets alpha 0. Scratch: (k - 1) * (k + 1) values.
template <typename T>
FU_HOST_DEVICE void span_complement(const T* g, int64_t k, double eps, T* w, T* scratch) {
  const int64_t m = k - 1;
  T* basis = scratch;       // m x m, row j: u_j's coefficients over the directions
  T* norms = basis + m * m; // |u_j|^2, 1 for a dropped direction
  T* row = norms + m;
  const T tolerance = 1000 * Epsilon<T>::value;
  for (int64_t i = 0; i < m * m; ++i) basis[i] = 0;
  for (int64_t j = 0; j < m; ++j) {
    norms[j] = 1;
    for (int64_t b = 0; b < m; ++b) row[b] = b == j ? T(1) : T(0);
    for (int64_t a = 0; a < j; ++a) {
      T along = 0;
      for (int64_t b = 0; b < m; ++b) along += basis[a * m + b] * g[(b + 1) * k + (j + 1)];
      const T c = along / norms[a];
      for (int64_t b = 0; b < m; ++b) row[b] -= c * basis[a * m + b];
    }
    T sq = 0;
    for (int64_t a = 0; a < m; ++a) {
      T da = 0;
      for (int64_t b = 0; b < m; ++b) da += g[(a + 1) * k + (b + 1)] * row[b];
      sq += row[a] * da;
    }
    if (sq > tolerance * g[(j + 1) * k + (j + 1)]) {
      for (int64_t b = 0; b < m; ++b) basis[j * m + b] = row[b];
      norms[j] = sq;
    }
  }
  w[0] = 1;
  for (int64_t b = 0; b < m; ++b) w[b + 1] = 0;
  for (int64_t a = 0; a < m; ++a) {
    T along = 0;
    for (int64_t b = 0; b < m; ++b) along += basis[a * m + b] * g[b + 1];
    const T c = along / (norms[a] + static_cast<T>(eps));
    for (int64_t b = 0; b < m; ++b) w[b + 1] -= c * basis[a * m + b];
  }
}

// PCGrad's sequential projections in Gram space: row i of the coefficients is g_i^PC over the
// task gradients; step t projects every row against its partner order[i, t] where their dot
// product is negative (or NaN, so that it shows). An order entry outside 0..k-1 (an order that was not
// checked, e.g. one on a GPU) makes every weight NaN instead of reading out of bounds. Scratch:
// k * (k + 1) values.
template <typename T>
FU_HOST_DEVICE void pcgrad(int kind, const T* g, int64_t k, const int64_t* order, double eps, T* w, T* scratch) {
  for (int64_t i = 0; i < k * k; ++i) {
    if (order[i] < 0 || order[i] >= k) {
      const T nan = T(0) / T(0);
      for (int64_t c = 0; c < k; ++c) w[c] = nan;
      return;
    }
  }
  T* coeffs = scratch;
  T* step = coeffs + k * k;
  for (int64_t i = 0; i < k * k; ++i) coeffs[i] = i % (k + 1) == 0 ? T(1) : T(0);
  for (int64_t t = 0; t < k; ++t) {
    for (int64_t i = 0; i < k; ++i) {
      const int64_t partner = order[i * k + t];
      T dot = 0;
      for (int64_t c = 0; c < k; ++c) dot += coeffs[i * k + c] * g[c * k + partner];
      step[i] = (dot < 0 || is_nan(dot)) ? dot / (g[partner * k + partner] + static_cast<T>(eps)) : T(0);
    }
    for (int64_t i = 0; i < k; ++i) coeffs[i * k + order[i * k + t]] -= step[i];
  }
  for (int64_t c = 0; c < k; ++c) {
    T sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += coeffs[i * k + c];
    w[c] = kind == kPCGradMean ? sum / static_cast<T>(k) : sum;
  }
}

// Scratch values `apply` needs for k vectors.
FU_HOST_DEVICE inline int64_t scratch_size(int64_t k) { return k * (k + 1); }

// What an op reports besides the Gram and the weights: for a projection [g.r, |g|^2, |r|^2, c]
// (ProjectionStats), for the span complement the coefficients alpha = -w[1:], else nothing.
FU_HOST_DEVICE inline int64_t stats_size(int kind, int64_t k) {
  return kind <= kProjectAscentConflict ? 4 : kind == kSpanComplement ? k - 1 : 0;
}

template <typename T>
FU_HOST_DEVICE void stats(int kind, const T* g, int64_t k, const T* w, T* out) {
  if (kind <= kProjectAscentConflict) {
    out[0] = g[1], out[1] = g[0], out[2] = g[3], out[3] = -w[1];
  } else if (kind == kSpanComplement) {
    for (int64_t j = 1; j < k; ++j) out[j - 1] = -w[j];
  }
}

template <typename T>
FU_HOST_DEVICE void apply(int kind, const T* g, int64_t k, const int64_t* order, double eps, T* w, T* scratch) {
  if (kind == kSpanComplement) return span_complement(g, k, eps, w, scratch);
  if (kind == kPCGradSum || kind == kPCGradMean) return pcgrad(kind, g, k, order, eps, w, scratch);
  projection(kind, g, eps, w);
}

}  // namespace weightings
}  // namespace fastunlearn
