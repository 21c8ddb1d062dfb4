// token_stats' online softmax on the CPU: per row, one pass for the chunk's maximum, one for the
// three exponential sums, both over a row of the chunk that stays in cache. Rows are independent
// and each is summed in a fixed order, so the bits do not depend on the thread count; the lanes are
// 16 fp32 values at every ISA level with no fused multiply-add, so they do not depend on the clone.
#include "token_stats.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernel_support.h"

// The 16-lane vector helpers below are always inlined into a clone of their level, so the ABI of a
// vector argument that GCC warns about never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastunlearn {
namespace {

constexpr int kLanes = 16;
// fp32 lane sums run over at most this many columns before they are added into fp64 (the error of
// an fp32 sum grows with its length; the chunk may be the whole vocabulary).
constexpr int64_t kFp32Run = 256;

typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

constexpr float kInf = std::numeric_limits<float>::infinity();

FU_INLINE F16 splat(float v) { return F16{} + v; }

// Up to 16 logits of a row (columns past `count` read as -inf: they weigh 0 in every sum).
template <typename scalar_t>
FU_INLINE F16 load(const scalar_t* z, int64_t stride, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stride == 1 && count == kLanes) {
      F16 v;
      std::memcpy(&v, z, sizeof(v));
      return v;
    }
  }
  float lanes[kLanes];
  for (int j = 0; j < kLanes; ++j) lanes[j] = j < count ? static_cast<float>(z[j * stride]) : -kInf;
  F16 v;
  std::memcpy(&v, lanes, sizeof(v));
  return v;
}

// e^x for x <= 0, from + and * only (Cephes' expf: x = n ln2 + r, a degree-7 polynomial in r,
// within 2 ulp), so every clone rounds alike; 0 below -87 (e^-87 ~ 1.6e-38: where the chunk's
// maximum contributes 1, nothing below that can show in an fp32 sum).
FU_INLINE F16 exp_nonpositive(F16 x) {
  const F16 v = x < splat(-87.0f) ? splat(-87.0f) : x;
  // Adding 1.5 * 2^23 rounds v log2(e) to an integer n, held in the low significand bits.
  constexpr float kRound = 12582912.0f;
  const F16 shifted = v * 1.44269504088896341f + kRound;
  const F16 n = shifted - kRound;
  F16 r = v - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // 2^n from n's bits in `shifted` (n in [-126, 0]: a normal float).
  const I16 exponent = ((I16)shifted - (I16)splat(kRound) + 127) << 23;
  const F16 result = p * (F16)exponent;
  return x < splat(-87.0f) ? splat(0.0f) : result;
}

FU_INLINE float max_of(F16 v) {
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof(lanes));
  float m = lanes[0];
  for (int j = 1; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  return m;
}

FU_INLINE double sum_of(const double* lanes) {
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

FU_INLINE void add_into(double* wide, F16 narrow) {
  float lanes[kLanes];
  std::memcpy(lanes, &narrow, sizeof(lanes));
  for (int j = 0; j < kLanes; ++j) wide[j] += lanes[j];
}

struct Job {
  double* state;  // [5, n]
  int64_t* best;
  const void* logits;
  int64_t n, width, start, row_stride, col_stride;
  const int64_t* targets;
  int64_t target_stride;
};

template <typename scalar_t>
FU_INLINE void update_row(const Job& job, int64_t row) {
  const scalar_t* z = static_cast<const scalar_t*>(job.logits) + row * job.row_stride;
  const int64_t width = job.width, stride = job.col_stride;

  F16 lane_max = splat(-kInf);
  for (int64_t t = 0; t < width; t += kLanes) {
    const F16 v = load(z + t * stride, stride, std::min<int64_t>(kLanes, width - t));
    lane_max = v > lane_max ? v : lane_max;
  }
  const float chunk_max = max_of(lane_max);
  int64_t chunk_arg = 0;  // the first maximum (0 where every logit is -inf, as torch.max)
  while (chunk_arg < width && static_cast<float>(z[chunk_arg * stride]) != chunk_max) ++chunk_arg;
  if (chunk_arg == width) chunk_arg = 0;

  double* const m = job.state + row;
  double* const s = m + job.n;
  double* const a = s + job.n;
  double* const b = a + job.n;
  double* const picked = b + job.n;
  const double m_new = std::max(*m, static_cast<double>(chunk_max));
  if (static_cast<double>(chunk_max) > *m) job.best[row] = job.start + chunk_arg;
  const int64_t target = job.targets[row * job.target_stride];
  if (target >= job.start && target < job.start + width) {
    *picked = static_cast<double>(static_cast<float>(z[(target - job.start) * stride]));
  }
  const double shift = std::isinf(m_new) && m_new < 0 ? 0.0 : m_new;
  const F16 shift_lanes = splat(static_cast<float>(shift));

  double wide_s[kLanes] = {}, wide_a[kLanes] = {}, wide_b[kLanes] = {};
  for (int64_t run = 0; run < width; run += kFp32Run) {
    const int64_t run_end = std::min(width, run + kFp32Run);
    F16 sum_s = splat(0.0f), sum_a = splat(0.0f), sum_b = splat(0.0f);
    for (int64_t t = run; t < run_end; t += kLanes) {
      const F16 v = load(z + t * stride, stride, std::min<int64_t>(kLanes, run_end - t));
      F16 y = v - shift_lanes;
      y = y < splat(-1e30f) ? splat(-1e30f) : y;
      const F16 e = exp_nonpositive(y);
      const F16 ey = e * y;
      sum_s = sum_s + e;
      sum_a = sum_a + ey;
      sum_b = sum_b + ey * y;
    }
    add_into(wide_s, sum_s);
    add_into(wide_a, sum_a);
    add_into(wide_b, sum_b);
  }
  const double chunk_s = sum_of(wide_s), chunk_a = sum_of(wide_a), chunk_b = sum_of(wide_b);
  // The old sums were relative to m; relative to m_new each term's exponent gains delta <= 0.
  const double delta = *s > 0 ? *m - shift : 0.0;
  const double scale = std::exp(delta);
  *b = scale * (*b + 2 * delta * *a + delta * delta * *s) + chunk_b;
  *a = scale * (*a + delta * *s) + chunk_a;
  *s = scale * *s + chunk_s;
  *m = m_new;
}

template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void update_rows(const Job& job, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) update_row<scalar_t>(job, row);
}

#define FU_TOKEN_STATS_ROWS(name, scalar_t) \
  FU_ISA_CLONES(name, (const Job& job, int64_t begin, int64_t end), (update_rows<kIsa, scalar_t>(job, begin, end)))
FU_TOKEN_STATS_ROWS(rows_f64, double)
FU_TOKEN_STATS_ROWS(rows_f32, float)
FU_TOKEN_STATS_ROWS(rows_bf16, c10::BFloat16)
FU_TOKEN_STATS_ROWS(rows_f16, c10::Half)
#undef FU_TOKEN_STATS_ROWS

}  // namespace

void token_stats_update_cpu(const at::Tensor& state, const at::Tensor& best, const at::Tensor& logits, int64_t start,
                            const at::Tensor& targets) {
  const int64_t n = logits.size(0), width = logits.size(1);
  if (n == 0 || width == 0) return;
  const Job job{state.data_ptr<double>(), best.data_ptr<int64_t>(), logits.const_data_ptr(), n, width, start,
                logits.stride(0), logits.stride(1), targets.const_data_ptr<int64_t>(), targets.stride(0)};
  void (*rows)(const Job&, int64_t, int64_t) = nullptr;
  switch (logits.scalar_type()) {
    case at::kDouble: rows = rows_f64.get(); break;
    case at::kFloat: rows = rows_f32.get(); break;
    case at::kBFloat16: rows = rows_bf16.get(); break;
    case at::kHalf: rows = rows_f16.get(); break;
    default: TORCH_CHECK(false, "fastunlearn: token_stats_update_ takes floating logits");
  }
  // A task of rows worth ~64k logits: enough to amortise a task, many tasks for a long block.
  const int64_t grain = std::max<int64_t>(1, 65536 / width);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { rows(job, begin, end); });
}

}  // namespace fastunlearn
