#include "overlap.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>

namespace fastunlearn {
namespace {

Span span_of(const at::Tensor& t, bool is_out, int64_t index) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  return {begin, begin + static_cast<uintptr_t>((last + 1) * t.element_size()), is_out, index};
}

bool same_place(const at::Tensor& out, int64_t out_index, const at::Tensor& in, int64_t in_index, int64_t n) {
  return out_index % n == in_index % n && out.const_data_ptr() == in.const_data_ptr() &&
         out.sizes() == in.sizes() && out.strides() == in.strides();
}

}  // namespace

std::vector<int64_t> find_overlap(at::TensorList outs, at::TensorList inputs, int64_t n) {
  TORCH_CHECK_VALUE(n > 0, "fastunlearn: find_overlap needs n > 0");
  for (size_t i = 0; i < outs.size(); ++i) {
    if (outs[i].numel() > 1 && at::has_internal_overlap(outs[i]) == at::MemOverlap::Yes) {
      return {0, static_cast<int64_t>(i)};
    }
  }
  std::vector<Span> spans;
  spans.reserve(outs.size() + inputs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    if (outs[i].numel() && !outs[i].is_meta()) spans.push_back(span_of(outs[i], true, i));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    // The output at this shard index may be this very tensor (in place): its span stands for both.
    const size_t own = i % n;
    if (own < outs.size() && outs[own].unsafeGetTensorImpl() == inputs[i].unsafeGetTensorImpl()) continue;
    if (inputs[i].numel() && !inputs[i].is_meta()) spans.push_back(span_of(inputs[i], false, i));
  }
  return sweep_spans(spans, [&](int64_t out, int64_t in) {
    return same_place(outs[out], out, inputs[in], in, n);
  });
}

}  // namespace fastunlearn
