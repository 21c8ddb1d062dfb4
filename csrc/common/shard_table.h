// The shard table of the GPU kernels, built once for the CUDA binding and the Triton launchers
// (torch.ops.fastunlearn.shard_table): rows of n shard addresses paired by shard index, their
// sizes, and the chunks of at most kTableChunk elements that the persistent grid strides over.
// Empty shards are dropped; runs of shards that sit back to back in every row (views of one flat
// gradient buffer) merge into one, so a flat-buffer gradient costs one entry however many
// parameters it holds. Everything is int64 (tensors past 2^31 elements).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/chunking.h"

namespace fastunlearn {

// Host int64 tensor: [num_shards, num_chunks, rows x num_shards addresses (row-major),
// num_shards sizes, num_chunks shard indices, num_chunks first elements].
// `chunk` is kTableChunk but for tests that exercise many chunks on small inputs.
at::Tensor build_shard_table(const std::vector<const void*>& addresses, int64_t rows,
                             const std::vector<int64_t>& sizes, int64_t itemsize, int64_t chunk = kTableChunk);

}  // namespace fastunlearn
