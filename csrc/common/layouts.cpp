#include "common/layouts.h"

namespace fastunlearn {

bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_non_overlapping_and_dense() || !b.is_non_overlapping_and_dense()) {
    return false;
  }
  if (a.sizes() != b.sizes()) {
    return false;
  }
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) {
      return false;
    }
  }
  return true;
}

Layouts layouts_of(at::TensorList first_vector) {
  Layouts layouts;
  layouts.of.reserve(first_vector.size());
  layouts.owned.reserve(first_vector.size());
  for (const auto& t : first_vector) {
    if (t.is_non_overlapping_and_dense()) {
      layouts.of.push_back(&t);
    } else {
      layouts.owned.push_back(at::empty(t.sizes(), t.options()));
      layouts.of.push_back(&layouts.owned.back());
    }
  }
  return layouts;
}

InputPointers input_pointers(at::TensorList shards, int64_t n, const Layouts& layouts) {
  InputPointers in;
  in.ptrs.reserve(shards.size());
  for (size_t s = 0; s < shards.size(); ++s) {
    const at::Tensor& t = shards[s];
    const at::Tensor& ref = *layouts.of[s % n];
    if (same_dense_layout(t, ref)) {
      in.ptrs.push_back(t.const_data_ptr());
    } else {
      // empty_like keeps a dense reference's strides, so the copy pairs with it element by element.
      in.copies.push_back(at::empty_like(ref).copy_(t));
      in.ptrs.push_back(in.copies.back().const_data_ptr());
    }
  }
  return in;
}

OutputPointers output_pointers(at::TensorList outs, int64_t n, const Layouts& layouts) {
  OutputPointers out;
  out.ptrs.reserve(outs.size());
  for (size_t s = 0; s < outs.size(); ++s) {
    const at::Tensor& ref = *layouts.of[s % n];
    if (same_dense_layout(outs[s], ref)) {
      out.ptrs.push_back(outs[s].data_ptr());
    } else {
      at::Tensor tmp = at::empty_like(ref);
      out.ptrs.push_back(tmp.data_ptr());
      out.copy_back.emplace_back(outs[s], std::move(tmp));
    }
  }
  return out;
}

bool pairs_with_layout(const at::Tensor& t, const at::Tensor& ref) {
  if (ref.is_non_overlapping_and_dense()) return same_dense_layout(t, ref);
  return t.sizes() == ref.sizes() && t.is_contiguous();
}

}  // namespace fastunlearn
