#pragma once

#include <ATen/ATen.h>

#include "common/dtypes.h"
#include "common/records.h"
#include "shards.h"

namespace fastunlearn {

// K x K Gram matrix of the vectors in `shards` (vector-major, K = num_vectors), in the
// accumulation dtype. Inputs are validated by the caller (csrc/common/validate.h).
// With `records` of flat shards (common/records.h), the pass runs on their pointers directly.
at::Tensor gram_cpu(at::TensorList shards, int64_t num_vectors, const Records* records = nullptr);

// The same pass over raw memory: ptrs[k * n + i] holds plan's shard i of vector k, dense and
// paired element by element. Returns the K x K matrix in fp64.
at::Tensor gram_pointers(const void* const* ptrs, const ChunkPlan& plan, int64_t num_vectors, at::ScalarType dtype);

}  // namespace fastunlearn
