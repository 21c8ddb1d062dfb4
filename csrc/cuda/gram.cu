// Gram partials of K shard-list vectors: one pass, a persistent grid, no atomics.
//
// A thread keeps each pair's products in registers (fp32 for fp32 and narrower input, fp64 for
// fp64) while it walks one chunk; at the chunk's end each warp sums its lanes in a fixed order and
// lane 0 adds the result to the warp's fp64 running sum in shared memory. A block finally adds its
// warps' sums in warp order and writes its partial; the binding adds the partials in block order.
// So the bits depend on the input and the grid size alone.
#include "common/weightings.h"
#include "device_support.cuh"

namespace fastunlearn {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr int kSide = kMaxGramVectors;

template <typename scalar_t, int MAXR, int MAXC, bool SAME>
__global__ void __launch_bounds__(kThreads) gram_partials_kernel(ShardTable table, int row0, int col0,
                                                                 int rows, int cols, double* partials) {
  using acc_t = typename Compute<scalar_t>::type;
  __shared__ double warp_totals[kWarps][MAXR * MAXC];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int p = threadIdx.x; p < kWarps * MAXR * MAXC; p += kThreads) (&warp_totals[0][0])[p] = 0.0;
  __syncthreads();

  for (int64_t c = blockIdx.x; c < table.num_chunks; c += gridDim.x) {
    const Chunk chunk = chunk_at(table, c);
    const scalar_t* x_ptr[MAXR];
    const scalar_t* y_ptr[MAXC];
#pragma unroll
    for (int r = 0; r < MAXR; ++r) x_ptr[r] = r < rows ? row_ptr<const scalar_t>(table, row0 + r, chunk.shard) : nullptr;
#pragma unroll
    for (int q = 0; q < MAXC; ++q) y_ptr[q] = q < cols ? row_ptr<const scalar_t>(table, col0 + q, chunk.shard) : nullptr;
    acc_t acc[MAXR * MAXC];
#pragma unroll
    for (int p = 0; p < MAXR * MAXC; ++p) acc[p] = acc_t(0);
    for (int64_t e = chunk.begin + threadIdx.x; e < chunk.end; e += kThreads) {
      acc_t x[MAXR], y[MAXC];
#pragma unroll
      for (int r = 0; r < MAXR; ++r) x[r] = r < rows ? to_float(x_ptr[r][e]) : acc_t(0);
      if constexpr (SAME) {
#pragma unroll
        for (int q = 0; q < MAXC; ++q) y[q] = x[q];
      } else {
#pragma unroll
        for (int q = 0; q < MAXC; ++q) y[q] = q < cols ? to_float(y_ptr[q][e]) : acc_t(0);
      }
#pragma unroll
      for (int r = 0; r < MAXR; ++r) {
#pragma unroll
        for (int q = 0; q < MAXC; ++q) {
          if (!SAME || r <= q) acc[r * MAXC + q] += x[r] * y[q];
        }
      }
    }
#pragma unroll
    for (int r = 0; r < MAXR; ++r) {
#pragma unroll
      for (int q = 0; q < MAXC; ++q) {
        if (!SAME || r <= q) {
          const acc_t sum = warp_sum(acc[r * MAXC + q]);
          if (lane == 0) warp_totals[warp][r * MAXC + q] += static_cast<double>(sum);
        }
      }
    }
  }
  __syncthreads();
  for (int p = threadIdx.x; p < MAXR * MAXC; p += kThreads) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += warp_totals[w][p];
    const int r = p / MAXC, q = p % MAXC;
    partials[static_cast<int64_t>(blockIdx.x) * kSide * kSide + r * kSide + q] = total;
  }
}

template <typename scalar_t>
int launch_typed(const ShardTable& table, int row0, int col0, int rows, int cols, bool same, double* partials,
                 int grid, void* stream) {
  if (!same) {
    if (rows > 8 || cols > 8) return static_cast<int>(cudaErrorInvalidValue);
    return launch(gram_partials_kernel<scalar_t, 8, 8, false>, grid, 0, stream, table, row0, col0, rows, cols,
                  partials);
  }
  if (rows <= 4) {
    return launch(gram_partials_kernel<scalar_t, 4, 4, true>, grid, 0, stream, table, row0, col0, rows, cols,
                  partials);
  }
  if (rows <= 8) {
    return launch(gram_partials_kernel<scalar_t, 8, 8, true>, grid, 0, stream, table, row0, col0, rows, cols,
                  partials);
  }
  if (rows > kMaxGramVectors) return static_cast<int>(cudaErrorInvalidValue);
  return launch(gram_partials_kernel<scalar_t, 16, 16, true>, grid, 0, stream, table, row0, col0, rows, cols,
                partials);
}

// One block: the Gram from the partials (blocks added in block order, upper triangle mirrored), in
// the accumulation type, then the weighting's scalar stage on it (common/weightings.h, the same
// code as the CPU's), so the whole K x K stage of an op is this one tiny launch.
template <typename acc_t, typename compute_t>
__global__ void __launch_bounds__(kThreads) gram_finish_kernel(const double* partials, int blocks, int k, int kind,
                                                               double eps, const int64_t* order, acc_t* scalars,
                                                               compute_t* combine_weights) {
  __shared__ acc_t gram[kSide * kSide];
  __shared__ acc_t weights[kSide];
  __shared__ acc_t scratch[kSide * (kSide + 1)];
  for (int p = threadIdx.x; p < k * k; p += kThreads) {
    const int r = p / k, q = p % k, a = r < q ? r : q, b = r < q ? q : r;
    double total = 0.0;
    for (int block = 0; block < blocks; ++block) total += partials[static_cast<int64_t>(block) * kSide * kSide + a * kSide + b];
    gram[p] = static_cast<acc_t>(total);
    scalars[p] = gram[p];
  }
  __syncthreads();
  if (threadIdx.x == 0 && kind >= 0) {
    weightings::apply<acc_t>(kind, gram, k, order, eps, weights, scratch);
    for (int v = 0; v < k; ++v) {
      scalars[k * k + v] = weights[v];
      combine_weights[v] = static_cast<compute_t>(weights[v]);
    }
    weightings::stats<acc_t>(kind, gram, k, weights, scalars + k * k + k);
  }
}

}  // namespace

int launch_gram_finish(Dtype dtype, const double* partials, int blocks, int k, int kind, double eps,
                       const int64_t* order, void* scalars, void* combine_weights, void* stream) {
  if (k < 1 || k > kMaxGramVectors) return static_cast<int>(cudaErrorInvalidValue);
  if (dtype == Dtype::kF64 || dtype == Dtype::kF32) {
    // fp32 and fp64 inputs accumulate in fp64; the combine computes fp32 input in fp32.
    if (dtype == Dtype::kF64) {
      return launch(gram_finish_kernel<double, double>, 1, 0, stream, partials, blocks, k, kind, eps, order,
                    static_cast<double*>(scalars), static_cast<double*>(combine_weights));
    }
    return launch(gram_finish_kernel<double, float>, 1, 0, stream, partials, blocks, k, kind, eps, order,
                  static_cast<double*>(scalars), static_cast<float*>(combine_weights));
  }
  return launch(gram_finish_kernel<float, float>, 1, 0, stream, partials, blocks, k, kind, eps, order,
                static_cast<float*>(scalars), static_cast<float*>(combine_weights));
}

int launch_gram_partials(Dtype dtype, const ShardTable& table, int row0, int col0, int rows, int cols, bool same,
                         double* partials, int grid, void* stream) {
  switch (dtype) {
    case Dtype::kF64: return launch_typed<double>(table, row0, col0, rows, cols, same, partials, grid, stream);
    case Dtype::kF32: return launch_typed<float>(table, row0, col0, rows, cols, same, partials, grid, stream);
    case Dtype::kBF16:
      return launch_typed<__nv_bfloat16>(table, row0, col0, rows, cols, same, partials, grid, stream);
    case Dtype::kF16: return launch_typed<__half>(table, row0, col0, rows, cols, same, partials, grid, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace fastunlearn
