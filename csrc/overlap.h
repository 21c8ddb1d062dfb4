#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastunlearn {

// The first memory conflict among the outputs of an in-place op and its inputs, from tensor
// metadata only (any device): {} if none; {0, i} if output i writes an element twice; {1, i, j, o}
// if output i overlaps output (o = 1) or input (o = 0) j other than being that very input at its own
// shard index (`n` shards per vector). The caller turns it into an error message.
std::vector<int64_t> find_overlap(at::TensorList outs, at::TensorList inputs, int64_t n);

// The memory [begin, end) of output or input `index`.
struct Span {
  uintptr_t begin, end;
  bool is_out;
  int64_t index;
};

// Sorts [first, last) by `less`. Spans are gathered list by list, and each list's tensors mostly
// sit in allocation order, ascending or descending: such runs are found, turned ascending and
// merged (O(n log runs)); spans in hardly any order are sorted outright.
template <typename It, typename Less>
void sort_by_runs(It first, It last, const Less& less) {
  const size_t size = last - first;
  std::vector<size_t> bounds{0};
  for (size_t i = 1; i < size; ++i) {
    const size_t start = bounds.back();
    if (i - start == 1 || less(first[i - 1], first[i]) == less(first[start], first[start + 1])) continue;
    if (!less(first[start], first[start + 1])) std::reverse(first + start, first + i);
    bounds.push_back(i);
  }
  const size_t tail = bounds.back();
  if (size - tail > 1 && !less(first[tail], first[tail + 1])) std::reverse(first + tail, last);
  bounds.push_back(size);
  const size_t runs = bounds.size() - 1;
  if (runs > 1 + size / 16) return std::sort(first, last, less);
  for (size_t width = 1; width < runs; width *= 2) {
    for (size_t r = 0; r + width < runs; r += 2 * width) {
      const size_t end = bounds[std::min(r + 2 * width, runs)];
      std::inplace_merge(first + bounds[r], first + bounds[r + width], first + end, less);
    }
  }
}

// The first of `count` disjoint spans in address order that ends after `address`: galloping from
// `hint` (the answer for the previous, usually lower, address), else a binary search below it.
inline size_t first_ending_after(const Span* spans, size_t count, uintptr_t address, size_t hint) {
  const auto ends_by = [address](const Span& s) { return s.end <= address; };
  hint = std::min(hint, count);
  if (hint > 0 && !ends_by(spans[hint - 1])) return std::partition_point(spans, spans + hint, ends_by) - spans;
  for (size_t lo = hint, step = 1;; step *= 2) {
    const size_t probe = lo + step - 1;
    if (probe >= count) return std::partition_point(spans + lo, spans + count, ends_by) - spans;
    if (!ends_by(spans[probe])) return std::partition_point(spans + lo, spans + probe, ends_by) - spans;
    lo = probe + 1;
  }
}

// The check behind find_overlap, over spans already gathered, the outputs' first (reordered in
// place): {} or {1, out, peer, peer_is_out}. same_place(out, in) says whether an output and an input
// that meet are one and the same tensor at one shard index (allowed: an in-place update). Only the
// outputs are sorted; inputs may meet each other, and each is looked up among the outputs.
template <typename SamePlace>
std::vector<int64_t> sweep_spans(std::vector<Span>& spans, const SamePlace& same_place) {
  const auto is_out = [](const Span& s) { return s.is_out; };
  TORCH_INTERNAL_ASSERT(std::is_partitioned(spans.begin(), spans.end(), is_out), "outputs come first");
  const auto inputs = std::partition_point(spans.begin(), spans.end(), is_out);
  const auto by_address = [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.index < b.index;
  };
  sort_by_runs(spans.begin(), inputs, by_address);
  const Span* outs = spans.data();
  const size_t num_outs = inputs - spans.begin();
  // In address order an output meets an earlier one exactly when it starts before the furthest end so far.
  for (size_t o = 1, furthest = 0; o < num_outs; ++o) {
    if (outs[o].begin < outs[furthest].end) return {1, outs[o].index, outs[furthest].index, 1};
    if (outs[o].end > outs[furthest].end) furthest = o;
  }
  size_t cursor = 0;
  for (auto in = inputs; in != spans.end(); ++in) {
    cursor = first_ending_after(outs, num_outs, in->begin, cursor);
    for (size_t o = cursor; o < num_outs && outs[o].begin < in->end; ++o) {
      if (!same_place(outs[o].index, in->index)) return {1, outs[o].index, in->index, 0};
    }
  }
  return {};
}

}  // namespace fastunlearn
