// Weighted sums of K shard-list vectors into M outputs: one pass, a persistent grid.
//
// A thread reads every input of an element before it writes any output of it, so an output may be
// the very tensor of an input at its own shard index. Sums run in input order, in fp32 (fp64 for
// fp64), and round once into the output dtype.
#include "device_support.cuh"

namespace fastunlearn {
namespace cuda {
namespace {

// The weights are read through the read-only cache: any K fits, with no shared-memory limit.
template <typename scalar_t, int MAXM>
__global__ void __launch_bounds__(kThreads) combine_kernel(ShardTable table, int k, int m, const void* weights) {
  using comp_t = typename Compute<scalar_t>::type;
  const comp_t* __restrict__ w = static_cast<const comp_t*>(weights);

  for (int64_t c = blockIdx.x; c < table.num_chunks; c += gridDim.x) {
    const Chunk chunk = chunk_at(table, c);
    scalar_t* out[MAXM];
#pragma unroll
    for (int j = 0; j < MAXM; ++j) out[j] = j < m ? row_ptr<scalar_t>(table, k + j, chunk.shard) : nullptr;
    for (int64_t e = chunk.begin + threadIdx.x; e < chunk.end; e += kThreads) {
      comp_t sums[MAXM];
      const comp_t x0 = to_float(row_ptr<const scalar_t>(table, 0, chunk.shard)[e]);
#pragma unroll
      for (int j = 0; j < MAXM; ++j) sums[j] = j < m ? __ldg(w + j * k) * x0 : comp_t(0);
      for (int v = 1; v < k; ++v) {
        const comp_t x = to_float(row_ptr<const scalar_t>(table, v, chunk.shard)[e]);
#pragma unroll
        for (int j = 0; j < MAXM; ++j) {
          if (j < m) sums[j] += __ldg(w + j * k + v) * x;
        }
      }
#pragma unroll
      for (int j = 0; j < MAXM; ++j) {
        if (j < m) out[j][e] = from_comp<scalar_t, comp_t>(sums[j]);
      }
    }
  }
}

template <typename scalar_t>
int launch_typed(const ShardTable& table, int k, int m, const void* weights, int grid, void* stream) {
  if (m == 1) return launch(combine_kernel<scalar_t, 1>, grid, 0, stream, table, k, m, weights);
  if (m <= 4) return launch(combine_kernel<scalar_t, 4>, grid, 0, stream, table, k, m, weights);
  if (m > kMaxOuts) return static_cast<int>(cudaErrorInvalidValue);
  return launch(combine_kernel<scalar_t, kMaxOuts>, grid, 0, stream, table, k, m, weights);
}

}  // namespace

int launch_combine(Dtype dtype, const ShardTable& table, int k, int m, const void* weights, int grid, void* stream) {
  switch (dtype) {
    case Dtype::kF64: return launch_typed<double>(table, k, m, weights, grid, stream);
    case Dtype::kF32: return launch_typed<float>(table, k, m, weights, grid, stream);
    case Dtype::kBF16: return launch_typed<__nv_bfloat16>(table, k, m, weights, grid, stream);
    case Dtype::kF16: return launch_typed<__half>(table, k, m, weights, grid, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace fastunlearn
