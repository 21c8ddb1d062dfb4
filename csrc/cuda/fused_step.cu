// SGD and AdamW along d = sum_k weights[k] * grads[k], formed per element in registers and never
// written to memory. The arithmetic follows fastunlearn.reference operation by operation, in fp32
// (fp64 for fp64 parameters); scalars derived from the hyperparameters (1 - beta2, lr / bias
// correction, ...) come from the host, computed in double as the reference's Python floats are.
#include "device_support.cuh"

namespace fastunlearn {
namespace cuda {
namespace {

constexpr int kGradRow0Sgd = 2;
constexpr int kGradRow0Adamw = 3;

template <typename scalar_t, typename comp_t>
__device__ __forceinline__ comp_t weighted_gradient(const ShardTable& table, int first_row, int k,
                                                    const comp_t* w, int64_t shard, int64_t e, bool maximize) {
  comp_t d = w[0] * to_float(row_ptr<const scalar_t>(table, first_row, shard)[e]);
  for (int v = 1; v < k; ++v) d += w[v] * to_float(row_ptr<const scalar_t>(table, first_row + v, shard)[e]);
  return maximize ? -d : d;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sgd_kernel(ShardTable table, int k, const void* weights,
                                                       const void* hyper, SgdFlags flags) {
  using comp_t = typename Compute<scalar_t>::type;
  const comp_t* w = static_cast<const comp_t*>(weights);
  const comp_t* h = static_cast<const comp_t*>(hyper);
  const comp_t lr = h[0], momentum = h[1], one_minus_dampening = h[2], weight_decay = h[3];
  for (int64_t c = blockIdx.x; c < table.num_chunks; c += gridDim.x) {
    const Chunk chunk = chunk_at(table, c);
    scalar_t* param = row_ptr<scalar_t>(table, 0, chunk.shard);
    scalar_t* buffer = row_ptr<scalar_t>(table, 1, chunk.shard);
    for (int64_t e = chunk.begin + threadIdx.x; e < chunk.end; e += kThreads) {
      comp_t d = weighted_gradient<scalar_t>(table, kGradRow0Sgd, k, w, chunk.shard, e, flags.maximize);
      const comp_t p = to_float(param[e]);
      if (weight_decay != comp_t(0)) d += weight_decay * p;
      if (flags.has_momentum) {
        const comp_t buf = flags.first_step ? d : momentum * to_float(buffer[e]) + one_minus_dampening * d;
        buffer[e] = from_comp<scalar_t, comp_t>(buf);
        d = flags.nesterov ? d + momentum * buf : buf;
      }
      param[e] = from_comp<scalar_t, comp_t>(p - lr * d);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) adamw_kernel(ShardTable table, int k, const void* weights,
                                                         const void* hyper, bool maximize) {
  using comp_t = typename Compute<scalar_t>::type;
  const comp_t* w = static_cast<const comp_t*>(weights);
  const comp_t* h = static_cast<const comp_t*>(hyper);
  const comp_t one_minus_beta1 = h[0], beta2 = h[1], one_minus_beta2 = h[2], eps = h[3];
  const comp_t decay = h[4], step_size = h[5], bias_correction2_sqrt = h[6];
  for (int64_t c = blockIdx.x; c < table.num_chunks; c += gridDim.x) {
    const Chunk chunk = chunk_at(table, c);
    scalar_t* param = row_ptr<scalar_t>(table, 0, chunk.shard);
    scalar_t* exp_avg = row_ptr<scalar_t>(table, 1, chunk.shard);
    scalar_t* exp_avg_sq = row_ptr<scalar_t>(table, 2, chunk.shard);
    for (int64_t e = chunk.begin + threadIdx.x; e < chunk.end; e += kThreads) {
      const comp_t d = weighted_gradient<scalar_t>(table, kGradRow0Adamw, k, w, chunk.shard, e, maximize);
      comp_t m = to_float(exp_avg[e]);
      m = m + one_minus_beta1 * (d - m);
      const comp_t v = beta2 * to_float(exp_avg_sq[e]) + one_minus_beta2 * d * d;
      const comp_t denom = sqrt(v) / bias_correction2_sqrt + eps;
      exp_avg[e] = from_comp<scalar_t, comp_t>(m);
      exp_avg_sq[e] = from_comp<scalar_t, comp_t>(v);
      const comp_t p = to_float(param[e]);
      param[e] = from_comp<scalar_t, comp_t>(p * decay - step_size * (m / denom));
    }
  }
}

}  // namespace

int launch_sgd_step(Dtype dtype, const ShardTable& table, int k, const void* weights, const void* hyper,
                    SgdFlags flags, int grid, void* stream) {
  switch (dtype) {
    case Dtype::kF64: return launch(sgd_kernel<double>, grid, 0, stream, table, k, weights, hyper, flags);
    case Dtype::kF32: return launch(sgd_kernel<float>, grid, 0, stream, table, k, weights, hyper, flags);
    case Dtype::kBF16: return launch(sgd_kernel<__nv_bfloat16>, grid, 0, stream, table, k, weights, hyper, flags);
    case Dtype::kF16: return launch(sgd_kernel<__half>, grid, 0, stream, table, k, weights, hyper, flags);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int launch_adamw_step(Dtype dtype, const ShardTable& table, int k, const void* weights, const void* hyper,
                      bool maximize, int grid, void* stream) {
  switch (dtype) {
    case Dtype::kF64: return launch(adamw_kernel<double>, grid, 0, stream, table, k, weights, hyper, maximize);
    case Dtype::kF32: return launch(adamw_kernel<float>, grid, 0, stream, table, k, weights, hyper, maximize);
    case Dtype::kBF16:
      return launch(adamw_kernel<__nv_bfloat16>, grid, 0, stream, table, k, weights, hyper, maximize);
    case Dtype::kF16: return launch(adamw_kernel<__half>, grid, 0, stream, table, k, weights, hyper, maximize);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace fastunlearn
