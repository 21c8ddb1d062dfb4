// Register primitives of the reduction kernels, one set per register width. A kernel names its
// lanes (how many accumulators each result keeps, summed in order at the end) independently of the
// ISA; each clone covers those lanes with the widest registers its level has, so every level runs
// the same additions in the same order and gives the same bits.
//
// Each wide primitive is compiled for the levels that have its registers; the kernels reach them
// only through a flattened clone of such a level (FU_ISA_CLONES), which inlines them.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa.h"
#include "kernel_support.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastunlearn {

// The widest register, in bytes, that a level computes in.
constexpr int register_bytes(CpuIsa isa) {
#if defined(__x86_64__)
  return isa == CpuIsa::kAvx512 ? 64 : isa == CpuIsa::kAvx2 ? 32 : 16;
#else
  return 16;
#endif
}

// Reg<acc_t, Bytes>: Bytes / sizeof(acc_t) lanes of acc_t.
//   zero(), load(const scalar_t*) (converting to acc_t), store(acc_t*, V),
//   madd(acc, a, b) = acc + a * b, rounded twice (the product, then the sum);
//   madd_exact(acc, a, b), the same where a * b is exact in acc_t: one fused rounding, same bits.
template <typename acc_t, int Bytes> struct Reg;

#if defined(__x86_64__)

template <> struct Reg<double, 16> {
  using V = __m128d;
  static V zero() { return _mm_setzero_pd(); }
  static V load(const double* p) { return _mm_loadu_pd(p); }
  static V load(const float* p) { return _mm_cvtps_pd(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)))); }
  static void store(double* p, V v) { _mm_storeu_pd(p, v); }
  static V madd(V acc, V a, V b) { return _mm_add_pd(acc, _mm_mul_pd(a, b)); }
  static V madd_exact(V acc, V a, V b) { return madd(acc, a, b); }
};

template <> struct Reg<double, 32> {
  using V = __m256d;
  FU_TARGET_AVX2 static V zero() { return _mm256_setzero_pd(); }
  FU_TARGET_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  FU_TARGET_AVX2 static V load(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
  FU_TARGET_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  FU_TARGET_AVX2 static V madd(V acc, V a, V b) { return _mm256_add_pd(acc, _mm256_mul_pd(a, b)); }
  FU_TARGET_AVX2 static V madd_exact(V acc, V a, V b) { return _mm256_fmadd_pd(a, b, acc); }
};

template <> struct Reg<double, 64> {
  using V = __m512d;
  FU_TARGET_AVX512 static V zero() { return _mm512_setzero_pd(); }
  FU_TARGET_AVX512 static V load(const double* p) { return _mm512_loadu_pd(p); }
  FU_TARGET_AVX512 static V load(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
  FU_TARGET_AVX512 static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  FU_TARGET_AVX512 static V madd(V acc, V a, V b) { return _mm512_add_pd(acc, _mm512_mul_pd(a, b)); }
  FU_TARGET_AVX512 static V madd_exact(V acc, V a, V b) { return _mm512_fmadd_pd(a, b, acc); }
};

// bf16 is the top half of an fp32; fp16 converts with F16C where the level has it.
template <> struct Reg<float, 16> {
  using V = __m128;
  static V zero() { return _mm_setzero_ps(); }
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static V load(const c10::BFloat16* p) {
    const __m128i bits = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), bits));
  }
  static V load(const c10::Half* p) {
    return _mm_setr_ps(static_cast<float>(p[0]), static_cast<float>(p[1]), static_cast<float>(p[2]),
                       static_cast<float>(p[3]));
  }
  static void store(float* p, V v) { _mm_storeu_ps(p, v); }
  static V madd_exact(V acc, V a, V b) { return _mm_add_ps(acc, _mm_mul_ps(a, b)); }
};

template <> struct Reg<float, 32> {
  using V = __m256;
  FU_TARGET_AVX2 static V zero() { return _mm256_setzero_ps(); }
  FU_TARGET_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  FU_TARGET_AVX2 static V load(const c10::BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  FU_TARGET_AVX2 static V load(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  FU_TARGET_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  FU_TARGET_AVX2 static V madd_exact(V acc, V a, V b) { return _mm256_fmadd_ps(a, b, acc); }
};

template <> struct Reg<float, 64> {
  using V = __m512;
  FU_TARGET_AVX512 static V zero() { return _mm512_setzero_ps(); }
  FU_TARGET_AVX512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  FU_TARGET_AVX512 static V load(const c10::BFloat16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  FU_TARGET_AVX512 static V load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  FU_TARGET_AVX512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  FU_TARGET_AVX512 static V madd_exact(V acc, V a, V b) { return _mm512_fmadd_ps(a, b, acc); }
};

#else  // other architectures: GCC vector extensions at 16 bytes

template <typename acc_t> struct Reg<acc_t, 16> {
  static constexpr int kLanes = 16 / sizeof(acc_t);
  typedef acc_t V __attribute__((vector_size(16)));
  static V zero() { return V{}; }
  template <typename scalar_t> static V load(const scalar_t* p) {
    V v;
    for (int j = 0; j < kLanes; ++j) v[j] = static_cast<acc_t>(p[j]);
    return v;
  }
  static void store(acc_t* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static V madd(V acc, V a, V b) { return acc + a * b; }
  static V madd_exact(V acc, V a, V b) { return acc + a * b; }
};

#endif

// sum + a * b for the products of two scalar_t inputs. Where that product is exact in the
// accumulation type (fp32 in fp64, bf16/fp16 in fp32) a fused multiply-add rounds once, exactly as
// the baseline's multiply-then-add does; fp64 products are not exact, so every level rounds twice.
template <typename scalar_t, typename R>
FU_INLINE typename R::V add_product(typename R::V sum, typename R::V a, typename R::V b) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return R::madd(sum, a, b);
  } else {
    return R::madd_exact(sum, a, b);
  }
}

}  // namespace fastunlearn
