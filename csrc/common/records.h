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
  c10::DispatchKeySet keys;
  at::ScalarType dtype;
  at::Layout layout;
  at::Device device{at::kCPU};
  bool symbolic;       // symbolic sizes (tracing): shapes are the tracer's to check
  bool subclass;       // a tensor subclass (DTensor, fake tensors)
  bool contiguous;     // row-major dense: the kernels read it as flat memory
  bool copy_on_write;  // a lazy clone: writing it must go through data_ptr(), which materialises it
  bool requires_grad, inference;
};

// The records of a list of tensors. A list whose records the ops' Python entry point has already
// read for this call (KnownRecords) is not read again: its records are shared.
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
  ~Records();

  const Record& operator[](size_t i) const { return data_[i]; }
  size_t size() const { return size_; }
  at::TensorList tensors() const { return tensors_; }
  // The union of the tensors' dispatch key sets.
  c10::DispatchKeySet keys() const;
  // Whether every record from `begin` on is contiguous, with memory, and no lazy clone.
  bool flat(size_t begin = 0) const;
  // Whether records i and j (of this list or `other`) have the same shape.
  bool same_shape(size_t i, const Records& other, size_t j) const;

 private:
  friend class KnownRecords;
  void read(at::TensorList tensors, size_t offset);
  void join(at::TensorList first, at::TensorList second);

  std::vector<Record> own_;
  std::vector<at::Tensor> joined_;  // borrowed from the two lists: no reference counting
  at::TensorList tensors_;
  at::TensorList first_, second_;  // the lists these records were read from (second_ empty: one list)
  const Record* data_ = nullptr;
  size_t size_ = 0;
};

// While alive, lets the op kernels of this thread share `records` (read by the Python entry point
// of the call) instead of reading their lists again. Matched by the lists' identity.
class KnownRecords {
 public:
  explicit KnownRecords(std::initializer_list<const Records*> records);
  ~KnownRecords();
  KnownRecords(const KnownRecords&) = delete;
  KnownRecords& operator=(const KnownRecords&) = delete;
};

}  // namespace fastunlearn
