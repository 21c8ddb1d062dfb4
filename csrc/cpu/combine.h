#pragma once

#include <ATen/ATen.h>

#include "common/records.h"
#include "shards.h"

namespace fastunlearn {

// outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i] for M = outs.size() / n outputs, in one
// pass. An output may be the very tensor of an input at the same shard index (in-place update);
// any other overlap is rejected by the caller (csrc/common/validate.h) before this runs.
// With `records` of flat outputs and inputs (common/records.h), the pass runs on their pointers.
void combine_cpu(at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t num_vectors,
                 const Records* out_records = nullptr, const Records* records = nullptr);

// The same pass over raw memory: plan's shard i of input k at in[k * n + i], of output m at
// out[m * n + i], all dense and paired element by element; weights (M x K, fp64) on the host.
void combine_pointers(void* const* out, int64_t num_outs, const void* const* in, const ChunkPlan& plan,
                      int64_t num_vectors, const double* weights, at::ScalarType dtype);

}  // namespace fastunlearn
