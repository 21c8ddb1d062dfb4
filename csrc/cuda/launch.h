// Raw-pointer launchers of the CUDA kernels. Plain C++ types only (no CUDA, no torch headers), so
// the torch binding (binding.cpp) compiles without CUDA headers and the kernels (*.cu) compile
// with a bare `nvcc -c` on any machine.
//
// Every launcher reads its shard list from a device table (ShardTable): the table's length is not
// bounded by a kernel's argument space, so a list of any length runs in one launch. Sizes and
// offsets are int64 throughout. Launchers return the cudaError_t of the launch as an int.
#pragma once

#include <cstdint>

#include "common/chunking.h"

namespace fastunlearn {
namespace cuda {

enum class Dtype : int { kF64 = 0, kF32 = 1, kBF16 = 2, kF16 = 3 };

// Elements of one shard that one chunk covers (one task of the persistent grid).
constexpr int64_t kChunk = kTableChunk;
constexpr int kThreads = 256;
// Vectors one Gram pass reduces together, and the side of the partials each block writes.
constexpr int kMaxGramVectors = 16;
// Outputs one combine pass writes.
constexpr int kMaxOuts = 16;

// Device memory: `ptrs` holds rows x num_shards addresses (row-major); `sizes` num_shards element
// counts; `chunks` 2 x num_chunks int64 (shard index, then first element of each chunk).
struct ShardTable {
  const int64_t* ptrs;
  const int64_t* sizes;
  const int64_t* chunks;
  int64_t num_shards;
  int64_t num_chunks;
};

// Block b of `grid` writes partials[b][r][c] (kMaxGramVectors x kMaxGramVectors doubles) for the
// dot products of table rows row0 + r (r < rows) and col0 + c (c < cols). `same` (row0 == col0,
// rows == cols) fills the upper triangle only. At most kMaxGramVectors rows, 8 when !same.
int launch_gram_partials(Dtype dtype, const ShardTable& table, int row0, int col0, int rows, int cols,
                         bool same, double* partials, int grid, void* stream);

// One block: the K x K Gram (K <= kMaxGramVectors) from `blocks` partials, into scalars[0 .. K*K) in
// the accumulation type (double for kF64/kF32, float otherwise); then, unless kind < 0, the weighting
// `kind` (common/weightings.h; `order` K x K int64 on the device for PCGrad) into scalars[K*K ..
// K*K + K), the weighting's stats after them (weightings::stats), and, in the combine's compute
// type, combine_weights[0 .. K).
int launch_gram_finish(Dtype dtype, const double* partials, int blocks, int k, int kind, double eps,
                       const int64_t* order, void* scalars, void* combine_weights, void* stream);

// Rows 0..k-1 of the table are inputs, rows k..k+m-1 outputs; out_j = sum_v weights[j * k + v] *
// in_v, with weights (m x k, device memory) in the compute dtype (double for kF64, float
// otherwise). m <= kMaxOuts. Each thread reads all inputs of an element before writing its outputs.
int launch_combine(Dtype dtype, const ShardTable& table, int k, int m, const void* weights, int grid,
                   void* stream);

struct SgdFlags {
  bool has_momentum, first_step, nesterov, maximize;
};

// Row 0 params, row 1 momentum buffers (any row when !has_momentum), rows 2.. the k gradients.
// hyper = {lr, momentum, 1 - dampening, weight_decay} and weights (k) in the compute dtype.
int launch_sgd_step(Dtype dtype, const ShardTable& table, int k, const void* weights, const void* hyper,
                    SgdFlags flags, int grid, void* stream);

// Row 0 params, 1 exp_avg, 2 exp_avg_sq, 3.. the k gradients. hyper = {1 - beta1, beta2, 1 - beta2,
// eps, 1 - lr * weight_decay, lr / bias_correction1, bias_correction2_sqrt} in the compute dtype.
int launch_adamw_step(Dtype dtype, const ShardTable& table, int k, const void* weights, const void* hyper,
                      bool maximize, int grid, void* stream);

}  // namespace cuda
}  // namespace fastunlearn

namespace fastunlearn {
namespace cuda {

// Streaming multiprocessors of CUDA device `device` (sizes the persistent grid).
int multiprocessor_count(int device);
// cudaGetErrorString of a launcher's return code.
const char* error_string(int code);

}  // namespace cuda
}  // namespace fastunlearn
