// Shard lists as the CPU kernels see them: K vectors, each a list of n tensors, passed flat and
// vector-major (vectors[k][i] is shards[k * n + i]). Every kernel walks one fixed chunk plan over
// the virtual concatenation of the shards, so results never depend on the thread count.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/layouts.h"

namespace fastunlearn {

// Elements per chunk: one task of the parallel loop and one partial of a reduction. Fixed, so the
// summation order is a function of the shard sizes alone.
constexpr int64_t kChunkElements = int64_t{1} << 15;

struct ChunkPlan {
  std::vector<int64_t> offsets;  // prefix sums of shard sizes, n + 1 entries, int64
  int64_t total() const { return offsets.back(); }
  int64_t num_chunks() const { return (total() + kChunkElements - 1) / kChunkElements; }
};

ChunkPlan plan_chunks(at::TensorList first_vector);

// Calls visit(shard, begin, end) for every piece of shard memory chunk `c` covers, in order.
// Always inlined (with `visit`), so it takes the ISA of the kernel clone that calls it.
template <typename Visit>
inline __attribute__((always_inline)) void for_each_piece(const ChunkPlan& plan, int64_t c, const Visit& visit) {
  const int64_t lo = c * kChunkElements;
  const int64_t hi = std::min(lo + kChunkElements, plan.total());
  auto it = std::upper_bound(plan.offsets.begin(), plan.offsets.end(), lo);
  int64_t shard = (it - plan.offsets.begin()) - 1;
  int64_t pos = lo;
  while (pos < hi) {
    const int64_t shard_end = plan.offsets[shard + 1];
    const int64_t end = std::min(hi, shard_end);
    if (end > pos) {
      visit(shard, pos - plan.offsets[shard], end - plan.offsets[shard]);
    }
    pos = end;
    ++shard;
  }
}

}  // namespace fastunlearn
