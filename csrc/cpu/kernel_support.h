// Compile-time knobs shared by the CPU kernels.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "isa.h"

namespace fastunlearn {

// Elements per block of combine's block buffers (the compute type; they stay in L1), and the unit
// of the prefetch distance.
constexpr int64_t kBlock = 256;

// fp32 and fp64 inputs accumulate in fp64; bf16 and fp16 in fp32 (their products keep every
// significand bit there).
template <typename scalar_t> struct Acc { using type = double; };
template <> struct Acc<c10::BFloat16> { using type = float; };
template <> struct Acc<c10::Half> { using type = float; };

// combine_ computes in the input type, but never below fp32.
template <typename scalar_t> struct Compute { using type = scalar_t; };
template <> struct Compute<c10::BFloat16> { using type = float; };
template <> struct Compute<c10::Half> { using type = float; };

// The hardware prefetcher loses track of K streams read in short bursts of a block each; ask for
// each line kPrefetchBlocks of the caller's blocks ahead explicitly (prefetching past the end of a
// shard is harmless), into every cache level: a non-temporal hint measured slower on both AVX2 and
// AVX-512 clones.
constexpr int64_t kPrefetchBlocks = 4;

template <int64_t kDistance = kPrefetchBlocks * kBlock, typename scalar_t>
inline __attribute__((always_inline)) void prefetch_ahead(const scalar_t* src, int64_t len) {
  constexpr int64_t per_line = 64 / sizeof(scalar_t);
  for (int64_t t = 0; t < len; t += per_line) __builtin_prefetch(src + t + kDistance, 0, 3);
}

}  // namespace fastunlearn

// Every level's extensions, as the CPU check in isa.cpp requires them.
#if defined(__x86_64__) && defined(__GNUC__)
#define FU_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma,f16c")))
#define FU_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define FU_TARGET_AVX512
#define FU_TARGET_AVX2
#endif

namespace fastunlearn {

// One kernel compiled for every ISA level; get() is the clone of the level in use (isa.h).
template <typename Fn>
struct IsaClones {
  Fn baseline, avx2, avx512;
  Fn get() const {
    switch (cpu_isa()) {
      case CpuIsa::kAvx512: return avx512;
      case CpuIsa::kAvx2: return avx2;
      default: return baseline;
    }
  }
};

}  // namespace fastunlearn

// Defines `name`, the IsaClones of a void function with parameter list `params` whose body runs
// the statement `call`, in which the constant kIsa names the clone's level. Each clone is
// flattened: its whole call tree, the level's register primitives (simd.h) included, is inlined
// and compiled for its level.
#define FU_ISA_CLONE(name, suffix, level, target, params, call) \
  target __attribute__((flatten)) void name##suffix params {    \
    [[maybe_unused]] constexpr CpuIsa kIsa = level;             \
    call;                                                       \
  }
#define FU_ISA_CLONES(name, params, call)                                                  \
  FU_ISA_CLONE(name, _avx512, CpuIsa::kAvx512, FU_TARGET_AVX512, params, call)             \
  FU_ISA_CLONE(name, _avx2, CpuIsa::kAvx2, FU_TARGET_AVX2, params, call)                   \
  FU_ISA_CLONE(name, _baseline, CpuIsa::kBaseline, , params, call)                         \
  const IsaClones<void(*) params> name{&name##_baseline, &name##_avx2, &name##_avx512};

#define FU_INLINE inline __attribute__((always_inline))
