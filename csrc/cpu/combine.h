#pragma once

#include <ATen/ATen.h>

namespace fastunlearn {

// outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i] for M = outs.size() / n outputs, in one
// pass. An output may be the very tensor of an input at the same shard index (in-place update);
// any other overlap is rejected by the caller (fastunlearn/_validate.py) before this runs.
void combine_cpu(at::TensorList outs, const at::Tensor& weights, at::TensorList shards,
                 int64_t num_vectors);

}  // namespace fastunlearn
