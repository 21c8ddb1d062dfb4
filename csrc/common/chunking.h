// The chunk size of the GPU shard tables, in a plain header: the CUDA kernels (compiled by a bare
// `nvcc -c`), the table builder (shard_table.h) and, through it, the Triton launchers share it.
#pragma once

#include <cstdint>

namespace fastunlearn {

// Elements of one shard that one chunk covers: one task of a persistent grid, one partial sum.
constexpr int64_t kTableChunk = int64_t{1} << 14;

}  // namespace fastunlearn
