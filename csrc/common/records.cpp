#include "common/records.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/COW.h>

#include <algorithm>

namespace fastunlearn {
namespace {

constexpr int64_t kPrefetchImpls = 12, kPrefetchStorages = 6;
// Lists shorter than this are read by one thread: waking the others costs more.
constexpr int64_t kParallelRecords = 2048;
constexpr size_t kMaxKnown = 4;

Record record_of(const at::Tensor& t) {
  Record r{};
  r.keys = t.key_set();
  if (t.is_nested()) {  // no sizes to read: refused by layout
    r.layout = at::kJagged;
    r.dtype = t.scalar_type();
    r.device = t.device();
    return r;
  }
  r.subclass = r.keys.has(c10::DispatchKey::Python);
  r.layout = t.layout();
  r.dtype = t.scalar_type();
  r.device = t.device();
  r.requires_grad = t.requires_grad();
  r.inference = t.is_inference();
  r.symbolic = t.unsafeGetTensorImpl()->has_symbolic_sizes_strides();
  if (r.symbolic || r.layout != at::kStrided) return r;
  r.numel = t.numel();
  r.dim = t.dim();
  if (r.dim <= kInlineDims) std::copy(t.sizes().begin(), t.sizes().end(), r.sizes.begin());
  r.contiguous = t.is_contiguous();
  if (!r.subclass && !t.is_meta() && t.has_storage() && r.numel > 0) {
    r.data = t.const_data_ptr();
    r.copy_on_write = c10::impl::cow::is_cow_data_ptr(t.storage().data_ptr());
  }
  return r;
}

// The records the Python entry point of this thread's current call has read.
thread_local std::array<const Records*, kMaxKnown> known_records{};

// Record buffers kept between calls: a fresh one per call would be a new allocation (for long lists
// fresh pages, each a fault) and value-initialised. A buffer only grows.
thread_local std::vector<std::vector<Record>> spare_buffers;

std::vector<Record> buffer_for(size_t size) {
  std::vector<Record> buffer;
  if (!spare_buffers.empty()) {
    buffer = std::move(spare_buffers.back());
    spare_buffers.pop_back();
  }
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

bool same_list(at::TensorList a, at::TensorList b) { return a.data() == b.data() && a.size() == b.size(); }

}  // namespace

Records::Records(at::TensorList tensors) : tensors_(tensors), first_(tensors) {
  for (const Records* known : known_records) {
    if (known != nullptr && known->second_.empty() && same_list(known->first_, tensors)) {
      data_ = known->data_, size_ = known->size_;
      return;
    }
  }
  own_ = buffer_for(tensors.size());
  read(tensors, 0);
  data_ = own_.data(), size_ = tensors.size();
}

Records::Records(at::TensorList first, at::TensorList second) : first_(first), second_(second) {
  for (const Records* known : known_records) {
    if (known != nullptr && same_list(known->first_, first) && same_list(known->second_, second)) {
      data_ = known->data_, size_ = known->size_, tensors_ = known->tensors_;
      return;
    }
  }
  own_ = buffer_for(first.size() + second.size());
  read(first, 0);
  read(second, first.size());
  data_ = own_.data(), size_ = first.size() + second.size();
  join(first, second);
}

Records::Records(const Records& other, size_t count)
    : tensors_(other.tensors_.slice(0, count)), data_(other.data_), size_(count) {}

// The joined tensors are borrowed (the lists they come from outlive the call): no reference counts
// move, and the destructor gives them back the same way.
void Records::join(at::TensorList first, at::TensorList second) {
  joined_.reserve(first.size() + second.size());
  for (at::TensorList list : {first, second}) {
    for (const at::Tensor& t : list) {
      joined_.emplace_back(c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::reclaim(
          t.unsafeGetTensorImpl()));
    }
  }
  tensors_ = joined_;
}

Records::~Records() {
  for (at::Tensor& t : joined_) t.unsafeReleaseTensorImpl();
  if (own_.capacity() > 0 && spare_buffers.size() < kMaxKnown + 2) spare_buffers.push_back(std::move(own_));
}

void Records::read(at::TensorList tensors, size_t offset) {
  Record* records = own_.data() + offset;
  const auto size = static_cast<int64_t>(tensors.size());
  at::parallel_for(0, size, kParallelRecords, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + kPrefetchImpls < end) {
        const char* impl = reinterpret_cast<const char*>(tensors[i + kPrefetchImpls].unsafeGetTensorImpl());
        for (int line = 0; line < 4; ++line) __builtin_prefetch(impl + 64 * line);
      }
      if (i + kPrefetchStorages < end) {
        const c10::TensorImpl* impl = tensors[i + kPrefetchStorages].unsafeGetTensorImpl();
        if (impl->has_storage()) __builtin_prefetch(impl->unsafe_storage().unsafeGetStorageImpl());
      }
      records[i] = record_of(tensors[i]);
    }
  });
}

c10::DispatchKeySet Records::keys() const {
  c10::DispatchKeySet keys;
  for (size_t i = 0; i < size_; ++i) keys = keys | data_[i].keys;
  return keys;
}

bool Records::flat(size_t begin) const {
  return std::all_of(data_ + begin, data_ + size_, [](const Record& r) {
    return r.contiguous && !r.copy_on_write && (r.data != nullptr || r.numel == 0) && !r.subclass;
  });
}

bool Records::same_shape(size_t i, const Records& other, size_t j) const {
  const Record &a = data_[i], &b = other.data_[j];
  if (a.symbolic || b.symbolic) return true;
  if (a.dim != b.dim) return false;
  if (a.dim > kInlineDims) return tensors_[i].sizes() == other.tensors_[j].sizes();
  return std::equal(a.sizes.begin(), a.sizes.begin() + a.dim, b.sizes.begin());
}

KnownRecords::KnownRecords(std::initializer_list<const Records*> records) {
  TORCH_INTERNAL_ASSERT(records.size() <= kMaxKnown);
  std::copy(records.begin(), records.end(), known_records.begin());
}

KnownRecords::~KnownRecords() { known_records.fill(nullptr); }

}  // namespace fastunlearn
