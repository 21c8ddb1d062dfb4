#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fastunlearn {

// The first memory conflict among the outputs of an in-place op and its inputs, from tensor
// metadata only (any device): {} if none; {0, i} if output i writes an element twice; {1, i, j, o}
// if output i overlaps output (o = 1) or input (o = 0) j other than being that very input at its own
// shard index (`n` shards per vector). The caller turns it into an error message.
std::vector<int64_t> find_overlap(at::TensorList outs, at::TensorList inputs, int64_t n);

}  // namespace fastunlearn
