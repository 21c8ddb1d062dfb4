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

// The sweep behind find_overlap, over spans already gathered (reordered in place): {} or
// {1, out, peer, peer_is_out}. same_place(out, in) says whether an output and an input that meet
// are one and the same tensor at one shard index (allowed: an in-place update).
template <typename SamePlace>
std::vector<int64_t> sweep_spans(std::vector<Span>& spans, const SamePlace& same_place) {
  const auto by_address = [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.index < b.index;
  };
  if (!std::is_sorted(spans.begin(), spans.end(), by_address)) std::sort(spans.begin(), spans.end(), by_address);
  std::vector<Span> active;
  for (const Span& span : spans) {
    active.erase(std::remove_if(active.begin(), active.end(), [&](const Span& a) { return a.end <= span.begin; }),
                 active.end());
    for (const Span& other : active) {
      if (!other.is_out && !span.is_out) continue;
      const Span& out = other.is_out ? other : span;
      const Span& peer = other.is_out ? span : other;
      if (!peer.is_out && same_place(out.index, peer.index)) continue;
      return {1, out.index, peer.index, peer.is_out ? 1 : 0};
    }
    active.push_back(span);
  }
  return {};
}

}  // namespace fastunlearn
