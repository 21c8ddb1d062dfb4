// Each tensor's metadata, read once per call into a compact record that the checks and the kernels
// share. Separately allocated gradients keep each tensor's metadata on its own heap page, between
// the data blocks: every visit of 20,000 of them costs a cache and a TLB miss each, so a call
// visits each tensor once (prefetched ahead, split among the intra-op threads for long lists).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

namespace fastunlearn {

constexpr int64_t kInlineDims = 5;

struct Record {
  const void* data;  // nullptr where there is no memory to read (meta, fake, symbolic, empty)
  int64_t numel;
  int64_t dim;  // sizes inline up to kInlineDims; beyond, compared through the tensor
  std::array<int64_t, kInlineDims> sizes;
  at::ScalarType dtype;
  at::Layout layout;
  at::Device device{at::kCPU};
  bool symbolic;       // symbolic sizes (tracing): shapes are the tracer's to check
  bool subclass;       // a tensor subclass (DTensor, fake tensors)
  bool contiguous;     // row-major dense: the kernels read it as flat memory
  bool copy_on_write;  // a lazy clone: writing it must go through data_ptr(), which materialises it
  bool requires_grad, inference;
};

class Records {
 public:
  explicit Records(at::TensorList tensors);
  // The records of `first` followed by `second`, read before the two lists are joined into the one
  // list `tensors()` returns (so that joining touches warm tensors only).
  Records(at::TensorList first, at::TensorList second);
  // The first `count` records of `other` (an update in place: the outputs are the first vector).
  Records(const Records& other, size_t count);
  Records(Records&&) = default;
  Records(const Records&) = delete;
  Records& operator=(const Records&) = delete;

  const Record& operator[](size_t i) const { return records_[i]; }
  size_t size() const { return records_.size(); }
  at::TensorList tensors() const { return tensors_; }
  // Whether every record from `begin` on is contiguous, with memory, and no lazy clone.
  bool flat(size_t begin = 0) const;
  // Whether records i and j (of this list or `other`) have the same shape.
  bool same_shape(size_t i, const Records& other, size_t j) const;

 private:
  void read(at::TensorList tensors, size_t offset);

  std::vector<at::Tensor> joined_;
  at::TensorList tensors_;
  std::vector<Record> records_;
};

}  // namespace fastunlearn
