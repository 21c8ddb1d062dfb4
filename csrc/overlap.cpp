#include "overlap.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>

namespace fastunlearn {
namespace {

struct Span {
  uintptr_t begin, end;
  bool is_out;
  int64_t index;
};

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
    if (inputs[i].numel() && !inputs[i].is_meta()) spans.push_back(span_of(inputs[i], false, i));
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.index < b.index;
  });
  std::vector<Span> active;
  for (const Span& span : spans) {
    active.erase(std::remove_if(active.begin(), active.end(), [&](const Span& a) { return a.end <= span.begin; }),
                 active.end());
    for (const Span& other : active) {
      if (!other.is_out && !span.is_out) continue;
      const Span& out = other.is_out ? other : span;
      const Span& peer = other.is_out ? span : other;
      if (!peer.is_out && same_place(outs[out.index], out.index, inputs[peer.index], peer.index, n)) continue;
      return {1, out.index, peer.index, peer.is_out ? 1 : 0};
    }
    active.push_back(span);
  }
  return {};
}

}  // namespace fastunlearn
