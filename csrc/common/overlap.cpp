#include "common/overlap.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <numeric>
#include <utility>

namespace fastunlearn {
namespace {

// The memory [begin, end) of output or input `index`.
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

// Meta and fake tensors have no memory to share.
bool in_memory(const at::Tensor& t) {
  return t.has_storage() && !t.is_meta() && !t.key_set().has(c10::DispatchKey::Python) && t.numel() > 0;
}

bool same_place(const at::Tensor& out, int64_t out_index, const at::Tensor& in, int64_t in_index, int64_t n) {
  return out_index % n == in_index % n && out.const_data_ptr() == in.const_data_ptr() &&
         out.sizes() == in.sizes() && out.strides() == in.strides();
}

// One dim of the question below: a stride, and the range [lo, hi] of index differences i_a - i_b.
struct Step {
  int64_t stride, lo, hi;
};

// Whether `diff` (in elements) is sum_d delta_d * stride_d with lo_d <= delta_d <= hi_d, over the
// dims from `d` on (sorted by decreasing stride); [reach_lo[d], reach_hi[d]] bounds what the dims
// after d can add.
bool reachable(int64_t diff, const std::vector<Step>& steps, const std::vector<int64_t>& reach_lo,
               const std::vector<int64_t>& reach_hi, size_t d) {
  if (d == steps.size()) return diff == 0;
  const Step& step = steps[d];
  const auto floor_div = [](int64_t a, int64_t b) { return a / b - (a % b != 0 && a < 0); };
  // The deltas that leave a remainder the later dims can reach: an interval, usually one value.
  const int64_t lo = std::max(step.lo, -floor_div(reach_hi[d] - diff, step.stride));
  const int64_t hi = std::min(step.hi, floor_div(diff - reach_lo[d], step.stride));
  for (int64_t delta = lo; delta <= hi; ++delta) {
    if (reachable(diff - delta * step.stride, steps, reach_lo, reach_hi, d + 1)) return true;
  }
  return false;
}

// Sorts spans by address: gradients mostly sit in allocation order, ascending or descending.
void sort_spans(std::vector<Span>& spans) {
  const auto by_address = [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.index < b.index;
  };
  if (std::is_sorted(spans.begin(), spans.end(), by_address)) return;
  std::reverse(spans.begin(), spans.end());
  if (!std::is_sorted(spans.begin(), spans.end(), by_address)) std::sort(spans.begin(), spans.end(), by_address);
}

}  // namespace

std::vector<int64_t> find_flat_overlap(const Records& outs, const Records& inputs, int64_t n) {
  std::vector<Span> out_spans;
  out_spans.reserve(outs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    const Record& r = outs[i];
    const auto begin = reinterpret_cast<uintptr_t>(r.data);
    const auto bytes = static_cast<uintptr_t>(r.numel) * c10::elementSize(r.dtype);
    if (r.numel > 0) out_spans.push_back({begin, begin + bytes, true, static_cast<int64_t>(i)});
  }
  sort_spans(out_spans);
  for (size_t o = 1; o < out_spans.size(); ++o) {
    if (out_spans[o].begin < out_spans[o - 1].end) return {1, out_spans[o].index, out_spans[o - 1].index, 1};
  }
  // Disjoint outputs in address order also end in order: a binary search finds the first candidate.
  for (size_t s = 0; s < inputs.size(); ++s) {
    const Record& in = inputs[s];
    if (in.numel == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(in.data);
    const uintptr_t end = begin + static_cast<uintptr_t>(in.numel) * c10::elementSize(in.dtype);
    auto o = std::partition_point(out_spans.begin(), out_spans.end(), [&](const Span& x) { return x.end <= begin; });
    for (; o != out_spans.end() && o->begin < end; ++o) {
      const bool same_place = o->index == static_cast<int64_t>(s) % n && outs[o->index].data == in.data;
      if (!same_place) return {1, o->index, static_cast<int64_t>(s), 0};
    }
  }
  return {};
}

bool share_element(const at::Tensor& a, const at::Tensor& b) {
  if (a.element_size() != b.element_size() || a.dim() != b.dim() || a.strides() != b.strides()) return true;
  const int64_t itemsize = a.element_size();
  const auto pa = reinterpret_cast<intptr_t>(a.const_data_ptr()), pb = reinterpret_cast<intptr_t>(b.const_data_ptr());
  if ((pb - pa) % itemsize != 0) return true;  // misaligned views of one buffer: not worth the arithmetic
  std::vector<Step> steps;  // a's element i meets b's element j where sum_d (i_d - j_d) stride_d = pb - pa
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) == 1 && b.size(d) == 1) continue;
    if (a.stride(d) <= 0) return true;  // broadcast or reversed dims: answer conservatively
    steps.push_back({a.stride(d), -(b.size(d) - 1), a.size(d) - 1});
  }
  std::sort(steps.begin(), steps.end(), [](const Step& x, const Step& y) { return x.stride > y.stride; });
  // Index differences are multiples of the strides' gcd: an offset that is not is out of reach at
  // once (and the search below stays short on many-dimensional views).
  int64_t divisor = 0;
  for (const Step& step : steps) divisor = std::gcd(divisor, step.stride);
  const int64_t offset = (pb - pa) / itemsize;
  if (divisor > 0 && offset % divisor != 0) return false;
  if (divisor == 0) return offset == 0;
  std::vector<int64_t> reach_lo(steps.size(), 0), reach_hi(steps.size(), 0);
  for (size_t d = steps.size(); d-- > 1;) {
    reach_lo[d - 1] = reach_lo[d] + steps[d].lo * steps[d].stride;
    reach_hi[d - 1] = reach_hi[d] + steps[d].hi * steps[d].stride;
  }
  return reachable(offset, steps, reach_lo, reach_hi, 0);
}

std::vector<int64_t> find_overlap(at::TensorList outs, at::TensorList inputs, int64_t n) {
  TORCH_CHECK_VALUE(n > 0, "fastunlearn: find_overlap needs n > 0");
  for (size_t i = 0; i < outs.size(); ++i) {
    if (in_memory(outs[i]) && outs[i].numel() > 1 && at::has_internal_overlap(outs[i]) == at::MemOverlap::Yes) {
      return {0, static_cast<int64_t>(i)};
    }
  }
  std::vector<Span> spans;
  spans.reserve(outs.size() + inputs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    if (in_memory(outs[i])) spans.push_back(span_of(outs[i], true, i));
  }
  const size_t num_outs = spans.size();
  for (size_t i = 0; i < inputs.size(); ++i) {
    // The output at this shard index may be this very tensor (in place): its span stands for both.
    const size_t own = i % n;
    if (own < outs.size() && outs[own].unsafeGetTensorImpl() == inputs[i].unsafeGetTensorImpl()) continue;
    if (in_memory(inputs[i])) spans.push_back(span_of(inputs[i], false, i));
  }
  // Outputs in address order (gradients mostly sit in allocation order, so this is nearly sorted).
  const auto by_address = [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.index < b.index;
  };
  std::sort(spans.begin(), spans.begin() + num_outs, by_address);
  // An output meets an earlier one only if it starts before the furthest end so far; then every
  // earlier output still open is asked whether it really shares an element.
  bool disjoint = true;  // whether the outputs' address ranges are disjoint (not merely their elements)
  for (size_t o = 1, furthest = 0; o < num_outs; ++o) {
    if (spans[o].begin < spans[furthest].end) {
      disjoint = false;
      for (size_t p = 0; p < o; ++p) {
        if (spans[p].end > spans[o].begin && share_element(outs[spans[o].index], outs[spans[p].index])) {
          return {1, spans[o].index, spans[p].index, 1};
        }
      }
    }
    if (spans[o].end > spans[furthest].end) furthest = o;
  }
  // Each input is looked up among the sorted outputs; inputs may meet each other.
  for (size_t s = num_outs; s < spans.size(); ++s) {
    const Span& in = spans[s];
    // Disjoint ranges in address order also end in order, so a binary search finds the first candidate.
    auto first = disjoint ? std::partition_point(spans.begin(), spans.begin() + num_outs,
                                                 [&](const Span& o) { return o.end <= in.begin; })
                          : spans.begin();
    for (auto o = first; o != spans.begin() + num_outs && o->begin < in.end; ++o) {
      if (o->end <= in.begin) continue;
      const at::Tensor& out = outs[o->index];
      const at::Tensor& input = inputs[in.index];
      if (!same_place(out, o->index, input, in.index, n) && share_element(out, input)) {
        return {1, o->index, in.index, 0};
      }
    }
  }
  return {};
}

}  // namespace fastunlearn
