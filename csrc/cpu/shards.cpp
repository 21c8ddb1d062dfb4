#include "shards.h"

namespace fastunlearn {

ChunkPlan plan_chunks(at::TensorList first_vector) {
  ChunkPlan plan;
  plan.offsets.reserve(first_vector.size() + 1);
  plan.offsets.push_back(0);
  for (const auto& t : first_vector) {
    plan.offsets.push_back(plan.offsets.back() + t.numel());
  }
  return plan;
}

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

at::Tensor dense_layout_of(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : at::empty(t.sizes(), t.options());
}

std::vector<at::Tensor> dense_inputs(at::TensorList shards, int64_t n,
                                     const std::vector<at::Tensor>& layout_of) {
  std::vector<at::Tensor> out;
  out.reserve(shards.size());
  for (size_t s = 0; s < shards.size(); ++s) {
    const at::Tensor& t = shards[s];
    const at::Tensor& ref = layout_of[s % n];
    if (same_dense_layout(t, ref)) {
      out.push_back(t);
    } else {
      // empty_like keeps a dense reference's strides, so the copy pairs with it element by element.
      out.push_back(at::empty_like(ref).copy_(t));
    }
  }
  return out;
}

}  // namespace fastunlearn
