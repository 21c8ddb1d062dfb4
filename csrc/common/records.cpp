#include "common/records.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/COW.h>

#include <algorithm>

namespace fastunlearn {
namespace {

constexpr int64_t kPrefetchImpls = 12, kPrefetchStorages = 6;
// Lists shorter than this are read by one thread: waking the others costs more.
constexpr int64_t kParallelRecords = 2048;

Record record_of(const at::Tensor& t) {
  Record r{};
  r.subclass = t.key_set().has(c10::DispatchKey::Python);
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

}  // namespace

Records::Records(at::TensorList tensors) : tensors_(tensors), records_(tensors.size()) { read(tensors, 0); }

Records::Records(at::TensorList first, at::TensorList second) : records_(first.size() + second.size()) {
  read(first, 0);
  read(second, first.size());
  joined_.reserve(records_.size());
  joined_.insert(joined_.end(), first.begin(), first.end());
  joined_.insert(joined_.end(), second.begin(), second.end());
  tensors_ = joined_;
}

Records::Records(const Records& other, size_t count)
    : tensors_(other.tensors_.slice(0, count)), records_(other.records_.begin(), other.records_.begin() + count) {}

void Records::read(at::TensorList tensors, size_t offset) {
  Record* records = records_.data() + offset;
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

bool Records::flat(size_t begin) const {
  return std::all_of(records_.begin() + begin, records_.end(), [](const Record& r) {
    return r.contiguous && !r.copy_on_write && (r.data != nullptr || r.numel == 0) && !r.subclass;
  });
}

bool Records::same_shape(size_t i, const Records& other, size_t j) const {
  const Record &a = records_[i], &b = other.records_[j];
  if (a.symbolic || b.symbolic) return true;
  if (a.dim != b.dim) return false;
  if (a.dim > kInlineDims) return tensors_[i].sizes() == other.tensors_[j].sizes();
  return std::equal(a.sizes.begin(), a.sizes.begin() + a.dim, b.sizes.begin());
}

}  // namespace fastunlearn
