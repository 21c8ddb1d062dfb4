#pragma once

#include <ATen/ATen.h>

namespace fastunlearn {

// One vocabulary chunk of token_stats' online softmax over N rows, in place on `state` [5, N] fp64
// (m, s, a, b, target logit) and `best` [N] int64; `logits` [N, C] are the columns start..start+C-1.
// fastunlearn/reference.py (token_stats_update_) is the specification; the caller validated.
void token_stats_update_cpu(const at::Tensor& state, const at::Tensor& best, const at::Tensor& logits, int64_t start,
                            const at::Tensor& targets);

}  // namespace fastunlearn
