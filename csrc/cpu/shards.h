// Shard lists as the CPU kernels see them: K vectors, each a list of n tensors, passed flat and
// vector-major (vectors[k][i] is shards[k * n + i]). Every kernel walks one fixed chunk plan over
// the virtual concatenation of the shards, so results never depend on the thread count.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

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

// The layout each shard index is computed in: the first vector's tensor where it is dense, else an
// (unfilled) contiguous tensor of its shape. Held by pointer, so dense lists cost no refcounting.
struct Layouts {
  std::vector<const at::Tensor*> of;  // n entries
  std::vector<at::Tensor> owned;      // the contiguous stand-ins (reserved: pointers stay valid)

  // `of` points into `owned`: moving keeps the buffer, a copy would not.
  Layouts() = default;
  Layouts(Layouts&&) = default;
  Layouts& operator=(Layouts&&) = default;
  Layouts(const Layouts&) = delete;
  Layouts& operator=(const Layouts&) = delete;
};
Layouts layouts_of(at::TensorList first_vector);

// Read-only inputs as flat memory: for each shard index i, every vector's tensor that shares
// `layouts.of[i]`'s strides and is dense is read in place; any other gets a dense copy in that
// layout (pairing elements by logical index, never by memory position), kept alive in `copies`.
struct InputPointers {
  std::vector<const void*> ptrs;  // vector-major, like the shards
  std::vector<at::Tensor> copies;
};
InputPointers input_pointers(at::TensorList shards, int64_t n, const Layouts& layouts);

// Outputs as flat memory: each tensor in its shard index's layout is written in place; any other
// is computed into a temporary in that layout and copied back by finish().
struct OutputPointers {
  std::vector<void*> ptrs;  // like the outputs
  std::vector<std::pair<at::Tensor, at::Tensor>> copy_back;
  void finish() {
    for (auto& [out, tmp] : copy_back) out.copy_(tmp);
  }
};
OutputPointers output_pointers(at::TensorList outs, int64_t n, const Layouts& layouts);

bool same_dense_layout(const at::Tensor& a, const at::Tensor& b);

}  // namespace fastunlearn
