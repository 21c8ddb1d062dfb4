// Shards as flat memory, the policy every device shares (the CPU loops, the CUDA binding and,
// through fastunlearn._C.layout_pairs, the Triton launchers): each shard index is computed in one
// dense layout -- its reference tensor's where that is dense, else contiguous -- and a tensor in
// another layout is read (or written) through a dense copy in that layout, so elements always
// pair by logical index, never by memory position.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace fastunlearn {

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

// Whether `t` pairs element by element with the layout shard index `ref` is computed in (see
// Layouts): `ref`'s own where it is dense, else the contiguous one.
bool pairs_with_layout(const at::Tensor& t, const at::Tensor& ref);

}  // namespace fastunlearn
