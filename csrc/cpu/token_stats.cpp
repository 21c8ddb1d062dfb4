// token_stats' online softmax on the CPU: per row, one pass for the chunk's maximum, one for the
// three exponential sums, both over a row of the chunk that stays in cache. Rows are independent
// and each is summed in a fixed order, so the bits do not depend on the thread count; the lanes are
// 16 fp32 values at every ISA level (in the level's registers) with no fused multiply-add, so they
// do not depend on the clone either.
#include "token_stats.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernel_support.h"
#include "simd.h"

// The 16-lane vector helpers below are always inlined into a clone of their level, so the ABI of a
// vector argument that GCC warns about never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastunlearn {
namespace {

constexpr int kLanes = 16;
// fp32 lane sums run over at most this many columns before they are added into fp64 (the error of
// an fp32 sum grows with its length; the chunk may be the whole vocabulary).
constexpr int64_t kFp32Run = 256;

constexpr float kInf = std::numeric_limits<float>::infinity();

// The 16 lanes as kParts registers of the level (one zmm, two ymm or four xmm): vectors no wider
// than the hardware's, whose comparisons and selects GCC keeps in registers.
template <CpuIsa kIsa> struct Lanes {
  static constexpr int kBytes = register_bytes(kIsa), kWidth = kBytes / 4, kParts = kLanes / kWidth;
  typedef float F __attribute__((vector_size(kBytes)));
  typedef int32_t I __attribute__((vector_size(kBytes)));
  static FU_INLINE F splat(float v) { return F{} + v; }

  // kWidth logits of a row (columns past `count` read as -inf: they weigh 0 in every sum).
  template <typename scalar_t, bool kUnitStride>
  static FU_INLINE F load(const scalar_t* z, int64_t stride, int64_t count) {
    F v;
    if constexpr (std::is_same_v<scalar_t, float> && kUnitStride) {
      if (count >= kWidth) {
        std::memcpy(&v, z, sizeof(v));
        return v;
      }
    }
    float values[kWidth];
    for (int j = 0; j < kWidth; ++j) values[j] = j < count ? static_cast<float>(z[j * stride]) : -kInf;
    std::memcpy(&v, values, sizeof(v));
    return v;
  }

  // e^x for x <= 0, from + and * only (Cephes' expf: x = n ln2 + r, a polynomial in r, within
  // 2 ulp), so every level rounds alike; 0 below -87 (e^-87 ~ 1.6e-38: where the chunk's maximum
  // contributes 1, nothing below that can show in an fp32 sum).
  static FU_INLINE F exp_nonpositive(F x) {
    const I underflow = x < splat(-87.0f);
    const F v = underflow ? splat(-87.0f) : x;
    // Adding 1.5 * 2^23 rounds v log2(e) to an integer n, held in the low significand bits.
    constexpr float kRound = 12582912.0f;
    const F shifted = v * 1.44269504088896341f + kRound;
    const F n = shifted - kRound;
    F r = v - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    F p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    // 2^n from n's bits in `shifted` (n in [-126, 0]: a normal float).
    const I exponent = ((I)shifted - (I)splat(kRound) + 127) << 23;
    return underflow ? splat(0.0f) : p * (F)exponent;
  }

  // Adds the lanes of `narrow` into the fp64 lanes wide[p * kWidth ..].
  static FU_INLINE void add_into(double* wide, F narrow) {
    float values[kWidth];
    std::memcpy(values, &narrow, sizeof(values));
    for (int j = 0; j < kWidth; ++j) wide[j] += values[j];
  }
};

FU_INLINE double sum_of(const double* lanes) {
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

struct Job {
  double* state;  // [5, n]
  int64_t* best;
  const void* logits;
  int64_t n, width, start, row_stride, col_stride;
  const int64_t* targets;
  int64_t target_stride;
};

template <CpuIsa kIsa, typename scalar_t, bool kUnitStride>
FU_INLINE void update_row(const Job& job, int64_t row) {
  using L = Lanes<kIsa>;
  using F = typename L::F;
  using I = typename L::I;
  constexpr int W = L::kWidth, P = L::kParts;
  const scalar_t* z = static_cast<const scalar_t*>(job.logits) + row * job.row_stride;
  const int64_t width = job.width, stride = kUnitStride ? 1 : job.col_stride;

  // Per lane the first strictly larger logit, so the smallest index among the lanes that hold the
  // maximum is the row's first maximum (0 where every logit is -inf, as torch.max).
  F lane_max[P];
  I lane_arg[P], column[P];
  for (int p = 0; p < P; ++p) {
    lane_max[p] = L::splat(-kInf);
    lane_arg[p] = I{};
    for (int j = 0; j < W; ++j) column[p][j] = p * W + j;
  }
  for (int64_t t = 0; t < width; t += kLanes) {
    for (int p = 0; p < P; ++p) {
      const F v = L::template load<scalar_t, kUnitStride>(z + (t + p * W) * stride, stride, width - t - p * W);
      const I better = v > lane_max[p];
      lane_max[p] = better ? v : lane_max[p];
      lane_arg[p] = better ? column[p] : lane_arg[p];
      column[p] += kLanes;
    }
  }
  float lanes[kLanes];
  int32_t args[kLanes];
  std::memcpy(lanes, lane_max, sizeof(lanes));
  std::memcpy(args, lane_arg, sizeof(args));
  float chunk_max = lanes[0];
  for (int j = 1; j < kLanes; ++j) chunk_max = lanes[j] > chunk_max ? lanes[j] : chunk_max;
  int64_t chunk_arg = width;
  for (int j = 0; j < kLanes; ++j) {
    if (lanes[j] == chunk_max && args[j] < chunk_arg) chunk_arg = args[j];
  }
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
  const F shift_lanes = L::splat(static_cast<float>(shift));

  double wide_s[kLanes] = {}, wide_a[kLanes] = {}, wide_b[kLanes] = {};
  for (int64_t run = 0; run < width; run += kFp32Run) {
    const int64_t run_end = std::min(width, run + kFp32Run);
    F sum_s[P], sum_a[P], sum_b[P];
    for (int p = 0; p < P; ++p) sum_s[p] = sum_a[p] = sum_b[p] = L::splat(0.0f);
    for (int64_t t = run; t < run_end; t += kLanes) {
      for (int p = 0; p < P; ++p) {
        const F v = L::template load<scalar_t, kUnitStride>(z + (t + p * W) * stride, stride, run_end - t - p * W);
        F y = v - shift_lanes;
        y = y < L::splat(-1e30f) ? L::splat(-1e30f) : y;
        const F e = L::exp_nonpositive(y);
        const F ey = e * y;
        sum_s[p] = sum_s[p] + e;
        sum_a[p] = sum_a[p] + ey;
        sum_b[p] = sum_b[p] + ey * y;
      }
    }
    for (int p = 0; p < P; ++p) {
      L::add_into(wide_s + p * W, sum_s[p]);
      L::add_into(wide_a + p * W, sum_a[p]);
      L::add_into(wide_b + p * W, sum_b[p]);
    }
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
  if (job.col_stride == 1) {
    for (int64_t row = begin; row < end; ++row) update_row<kIsa, scalar_t, true>(job, row);
  } else {
    for (int64_t row = begin; row < end; ++row) update_row<kIsa, scalar_t, false>(job, row);
  }
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
