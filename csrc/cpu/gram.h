#pragma once

#include <ATen/ATen.h>

namespace fastunlearn {

// The dtype a reduction over `dtype` inputs accumulates and returns in.
at::ScalarType accumulation_dtype(at::ScalarType dtype);

// K x K Gram matrix of the vectors in `shards` (vector-major, K = num_vectors), in the
// accumulation dtype. Inputs are validated by the caller (fastunlearn/_validate.py).
at::Tensor gram_cpu(at::TensorList shards, int64_t num_vectors);

}  // namespace fastunlearn
