// The overlap policy of every in-place op, written once (all devices; metadata only).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "common/records.h"

namespace fastunlearn {

// The first memory conflict among the outputs of an in-place op and its inputs: {} if none; {0, i}
// if output i writes an element twice; {1, i, j, o} if output i shares an element with output
// (o = 1) or input (o = 0) j other than by being that very input at its own shard index (`n`
// shards per vector). Sharing means a common element: views that interleave within one buffer (the
// columns 0:2 and 2:4 of a matrix) meet in their address ranges but not in memory. The caller turns
// the answer into an error message.
std::vector<int64_t> find_overlap(at::TensorList outs, at::TensorList inputs, int64_t n);

// The same answer for outputs and inputs that are all flat memory (Records::flat), from their
// records alone: there a shared element is a meeting of address ranges.
std::vector<int64_t> find_flat_overlap(const Records& outs, const Records& inputs, int64_t n);

// Whether two tensors whose address ranges meet share an element: exact where both have the same
// strides and element size (is their offset difference a reachable index difference?); otherwise
// meeting ranges count as sharing.
bool share_element(const at::Tensor& a, const at::Tensor& b);

}  // namespace fastunlearn
