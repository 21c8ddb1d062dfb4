// Compile-time knobs shared by the CPU kernels.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fastunlearn {

// Elements staged per block in a stack buffer of the accumulation type (stays in L1).
constexpr int64_t kBlock = 256;

// fp32 and fp64 inputs accumulate in fp64; bf16 and fp16 in fp32 (their products are exact there).
template <typename scalar_t> struct Acc { using type = double; };
template <> struct Acc<c10::BFloat16> { using type = float; };
template <> struct Acc<c10::Half> { using type = float; };

// combine_ computes in the input type, but never below fp32.
template <typename scalar_t> struct Compute { using type = scalar_t; };
template <> struct Compute<c10::BFloat16> { using type = float; };
template <> struct Compute<c10::Half> { using type = float; };

// The hardware prefetcher loses track of K streams read in short bursts of kBlock elements; ask for
// each line a few blocks ahead explicitly (prefetching past the end of a shard is harmless).
constexpr int64_t kPrefetchBlocks = 4;

template <typename scalar_t>
inline __attribute__((always_inline)) void prefetch_ahead(const scalar_t* src, int64_t len) {
  constexpr int64_t per_line = 64 / sizeof(scalar_t);
  for (int64_t t = 0; t < len; t += per_line) __builtin_prefetch(src + t + kPrefetchBlocks * kBlock, 0, 0);
}

}  // namespace fastunlearn

// One clone per ISA level, picked at load time; lane-structured loops give every clone the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FU_MULTIVERSION
#endif
#define FU_INLINE inline __attribute__((always_inline))
