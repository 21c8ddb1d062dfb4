// The dtype policy of every op, written once: which dtypes the ops take, what each accumulates in,
// and what a reduction returns. The Python side asks the extension (fastunlearn._C) for it.
#pragma once

#include <c10/core/ScalarType.h>

namespace fastunlearn {

inline bool supported_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
}

// fp32 and fp64 inputs accumulate in fp64 (fp32 products are exact there); bf16 and fp16 in fp32.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return (dtype == at::kFloat || dtype == at::kDouble) ? at::kDouble : at::kFloat;
}

// What gram, dot and sq_norm return by default: the input dtype, but never below fp32.
inline at::ScalarType result_dtype(at::ScalarType dtype) {
  return (dtype == at::kFloat || dtype == at::kDouble) ? dtype : at::kFloat;
}

// Shards of several dtypes (bf16 weights beside fp32 adapters) meet in the wider of their rules.
inline at::ScalarType wider(at::ScalarType a, at::ScalarType b) {
  return (a == at::kDouble || b == at::kDouble) ? at::kDouble : at::kFloat;
}

}  // namespace fastunlearn
