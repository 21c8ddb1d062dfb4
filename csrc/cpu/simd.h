// Register primitives of the CPU kernels, one set per register width. A reduction names its lanes
// (how many accumulators each result keeps, summed in order at the end) independently of the ISA;
// each clone covers those lanes with the widest registers its level has, so every level runs the
// same additions in the same order and gives the same bits. Elementwise kernels use the same
// primitives for their bf16/fp16 conversions, which round as c10's do at every level.
//
// Each wide primitive is compiled for the levels that have its registers; the kernels reach them
// only through a flattened clone of such a level (FU_ISA_CLONES), which inlines them.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
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
//   V takes + - * / and unary - lane by lane (GCC's vector types), rounding as the scalar operators do,
//   load(const scalar_t*) (converting to acc_t), store(acc_t*, V), broadcast(acc_t), sqrt(V),
//   for fp32 lanes also store(bf16* / fp16*, V), rounding as c10's conversions do (NaN included),
//   for 64-byte registers also load_twice(const acc_t*): the 32 bytes there, in both halves,
//   madd(acc, a, b) = acc + a * b, rounded twice (the product, then the sum);
//   madd_exact(acc, a, b), the same where a * b is exact in acc_t: one fused rounding, same bits
//   (add_product below says where that holds).
template <typename acc_t, int Bytes> struct Reg;

#if defined(__x86_64__)

template <> struct Reg<double, 16> {
  using V = __m128d;
  static V load(const double* p) { return _mm_loadu_pd(p); }
  // Two floats through the (may_alias) integer load: _mm_load_sd reads them as a double, which
  // GCC may order before the floats are written (a zero-padded tail on the stack).
  static V load(const float* p) {
    return _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void store(double* p, V v) { _mm_storeu_pd(p, v); }
  static V broadcast(double w) { return _mm_set1_pd(w); }
  static V sqrt(V v) { return _mm_sqrt_pd(v); }
  static V madd(V acc, V a, V b) { return _mm_add_pd(acc, _mm_mul_pd(a, b)); }
  static V madd_exact(V acc, V a, V b) { return madd(acc, a, b); }
};

template <> struct Reg<double, 32> {
  using V = __m256d;
  FU_TARGET_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  FU_TARGET_AVX2 static V load(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
  FU_TARGET_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  FU_TARGET_AVX2 static V broadcast(double w) { return _mm256_set1_pd(w); }
  FU_TARGET_AVX2 static V sqrt(V v) { return _mm256_sqrt_pd(v); }
  FU_TARGET_AVX2 static V madd(V acc, V a, V b) { return _mm256_add_pd(acc, _mm256_mul_pd(a, b)); }
  FU_TARGET_AVX2 static V madd_exact(V acc, V a, V b) { return _mm256_fmadd_pd(a, b, acc); }
};

template <> struct Reg<double, 64> {
  using V = __m512d;
  FU_TARGET_AVX512 static V load(const double* p) { return _mm512_loadu_pd(p); }
  FU_TARGET_AVX512 static V load(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
  FU_TARGET_AVX512 static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  FU_TARGET_AVX512 static V load_twice(const double* p) { return _mm512_broadcast_f64x4(_mm256_loadu_pd(p)); }
  FU_TARGET_AVX512 static V broadcast(double w) { return _mm512_set1_pd(w); }
  FU_TARGET_AVX512 static V sqrt(V v) { return _mm512_sqrt_pd(v); }
  FU_TARGET_AVX512 static V madd(V acc, V a, V b) { return _mm512_add_pd(acc, _mm512_mul_pd(a, b)); }
  FU_TARGET_AVX512 static V madd_exact(V acc, V a, V b) { return _mm512_fmadd_pd(a, b, acc); }
};

// bf16 is the top half of an fp32; fp16 converts with F16C where the level has it.
template <> struct Reg<float, 16> {
  using V = __m128;
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static V load(const c10::BFloat16* p) {
    const __m128i bits = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), bits));
  }
  // SSE2 has no F16C: c10's portable conversions (fp16_ieee_to_fp32_value, fp16_ieee_from_fp32_value)
  // on four lanes, operation for operation, so they give c10's bits, denormal flags or not. Their
  // unsigned comparisons become signed ones on values below 2^31 (the load's shifted right by one,
  // the store's on the exponent field) and the store's NaN test an unordered compare. The store
  // rounds in MXCSR's mode (F16C in the instruction's): under a non-default rounding mode, this
  // level's fp16 outputs differ from the others'.
  static V load(const c10::Half* p) {
    const __m128i w = _mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m128i sign = _mm_and_si128(w, _mm_set1_epi32(INT32_MIN));
    const __m128i two_w = _mm_add_epi32(w, w);
    const __m128 normalized = _mm_mul_ps(
        _mm_castsi128_ps(_mm_add_epi32(_mm_srli_epi32(two_w, 4), _mm_set1_epi32(0xE0 << 23))),
        _mm_castsi128_ps(_mm_set1_epi32(15 << 23)));  // 2^-112
    const __m128 denormalized = _mm_sub_ps(
        _mm_castsi128_ps(_mm_or_si128(_mm_srli_epi32(two_w, 17), _mm_set1_epi32(126 << 23))), _mm_set1_ps(0.5f));
    const __m128i tiny = _mm_cmplt_epi32(_mm_srli_epi32(two_w, 1), _mm_set1_epi32(1 << 26));
    const __m128i value = select(tiny, _mm_castps_si128(denormalized), _mm_castps_si128(normalized));
    return _mm_castsi128_ps(_mm_or_si128(value, sign));
  }
  static void store(float* p, V v) { _mm_storeu_ps(p, v); }
  static void store(c10::BFloat16* p, V v) {
    const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
    store_low_halves(p, select(nan, _mm_set1_epi32(0x7FC0), bf16_rounded(_mm_castps_si128(v))));
  }
  static void store(c10::Half* p, V v) {
    const __m128i w = _mm_castps_si128(v);
    const __m128 magnitude = _mm_andnot_ps(_mm_set1_ps(-0.0f), v);
    __m128 base = _mm_mul_ps(_mm_mul_ps(magnitude, _mm_castsi128_ps(_mm_set1_epi32(239 << 23))),  // 2^112
                             _mm_castsi128_ps(_mm_set1_epi32(17 << 23)));                         // 2^-110
    // c10's bias, shifted right by one: the exponent field, at least 0x38800000.
    const __m128i exponent = _mm_and_si128(w, _mm_set1_epi32(0x7F800000));
    const __m128i low = _mm_cmplt_epi32(exponent, _mm_set1_epi32(0x38800000));
    const __m128i bias = select(low, _mm_set1_epi32(0x38800000), exponent);
    base = _mm_add_ps(_mm_castsi128_ps(_mm_add_epi32(bias, _mm_set1_epi32(0x07800000))), base);
    const __m128i bits = _mm_castps_si128(base);
    const __m128i nonsign = _mm_add_epi32(_mm_and_si128(_mm_srli_epi32(bits, 13), _mm_set1_epi32(0x7C00)),
                                          _mm_and_si128(bits, _mm_set1_epi32(0xFFF)));
    const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
    const __m128i sign = _mm_srli_epi32(_mm_and_si128(w, _mm_set1_epi32(INT32_MIN)), 16);
    store_low_halves(p, _mm_or_si128(sign, select(nan, _mm_set1_epi32(0x7E00), nonsign)));
  }
  static V broadcast(float w) { return _mm_set1_ps(w); }
  static V sqrt(V v) { return _mm_sqrt_ps(v); }
  static V madd(V acc, V a, V b) { return _mm_add_ps(acc, _mm_mul_ps(a, b)); }
  static V madd_exact(V acc, V a, V b) { return madd(acc, a, b); }

  // mask ? a : b, lane by lane (SSE2 has no blend).
  static __m128i select(__m128i mask, __m128i a, __m128i b) {
    return _mm_or_si128(_mm_and_si128(mask, a), _mm_andnot_si128(mask, b));
  }

  // The low 16 bits of each of four 32-bit lanes, stored as four 16-bit values: sign-extended
  // first so that the signed pack keeps their bits (SSE2 has no unsigned one).
  static void store_low_halves(void* p, __m128i lanes) {
    const __m128i extended = _mm_srai_epi32(_mm_slli_epi32(lanes, 16), 16);
    _mm_storel_epi64(static_cast<__m128i*>(p), _mm_packs_epi32(extended, extended));
  }

  // c10::BFloat16's rounding of an fp32 to the nearest even bf16, on four lanes of fp32 bits.
  static __m128i bf16_rounded(__m128i bits) {
    const __m128i lsb = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
    return _mm_srli_epi32(_mm_add_epi32(bits, _mm_add_epi32(lsb, _mm_set1_epi32(0x7FFF))), 16);
  }
};

template <> struct Reg<float, 32> {
  using V = __m256;
  FU_TARGET_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  FU_TARGET_AVX2 static V load(const c10::BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  FU_TARGET_AVX2 static V load(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  FU_TARGET_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  FU_TARGET_AVX2 static void store(c10::BFloat16* p, V v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  // c10::Half rounds to nearest even, as F16C does; a NaN becomes sign | 0x7E00 there, so NaN lanes
  // are made the canonical quiet NaN (keeping the sign) first, which F16C converts to exactly that.
  FU_TARGET_AVX2 static void store(c10::Half* p, V v) {
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256 canonical = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)),
                                          _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)));
    const __m128i halves = _mm256_cvtps_ph(_mm256_blendv_ps(v, canonical, nan), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), halves);
  }
  FU_TARGET_AVX2 static V broadcast(float w) { return _mm256_set1_ps(w); }
  FU_TARGET_AVX2 static V sqrt(V v) { return _mm256_sqrt_ps(v); }
  FU_TARGET_AVX2 static V madd(V acc, V a, V b) { return _mm256_add_ps(acc, _mm256_mul_ps(a, b)); }
  FU_TARGET_AVX2 static V madd_exact(V acc, V a, V b) { return _mm256_fmadd_ps(a, b, acc); }
};

template <> struct Reg<float, 64> {
  using V = __m512;
  FU_TARGET_AVX512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  FU_TARGET_AVX512 static V load(const c10::BFloat16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  FU_TARGET_AVX512 static V load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  FU_TARGET_AVX512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  FU_TARGET_AVX512 static V load_twice(const float* p) {  // as 4 doubles: AVX512F broadcasts no 8 floats
    return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))));
  }
  FU_TARGET_AVX512 static void store(c10::BFloat16* p, V v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    rounded = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), rounded, _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
  }
  FU_TARGET_AVX512 static void store(c10::Half* p, V v) {  // NaN lanes as in Reg<float, 32>
    const __m512 canonical = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN)), _mm512_set1_epi32(0x7FC00000)));
    const __m512 fixed = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v, canonical);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(fixed, _MM_FROUND_TO_NEAREST_INT));
  }
  FU_TARGET_AVX512 static V broadcast(float w) { return _mm512_set1_ps(w); }
  FU_TARGET_AVX512 static V sqrt(V v) { return _mm512_sqrt_ps(v); }
  FU_TARGET_AVX512 static V madd(V acc, V a, V b) { return _mm512_add_ps(acc, _mm512_mul_ps(a, b)); }
  FU_TARGET_AVX512 static V madd_exact(V acc, V a, V b) { return _mm512_fmadd_ps(a, b, acc); }
};

#else  // other architectures: GCC vector extensions at 16 bytes

template <typename acc_t> struct Reg<acc_t, 16> {
  static constexpr int kLanes = 16 / sizeof(acc_t);
  typedef acc_t V __attribute__((vector_size(16)));
  template <typename scalar_t> static V load(const scalar_t* p) {
    V v;
    for (int j = 0; j < kLanes; ++j) v[j] = static_cast<acc_t>(p[j]);
    return v;
  }
  static void store(acc_t* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  template <typename scalar_t> static void store(scalar_t* p, V v) {
    for (int j = 0; j < kLanes; ++j) p[j] = static_cast<scalar_t>(v[j]);
  }
  static V broadcast(acc_t w) { return V{} + w; }
  static V sqrt(V v) {
    for (int j = 0; j < kLanes; ++j) v[j] = std::sqrt(v[j]);
    return v;
  }
  static V madd(V acc, V a, V b) { return acc + a * b; }
  static V madd_exact(V acc, V a, V b) { return acc + a * b; }
};

#endif

// One lane of acc_t with Reg's interface: the elementwise kernels run a shard's tail through the
// same expressions as its whole registers, so the tail rounds as they do.
template <typename acc_t> struct Scalar {
  using V = acc_t;
  template <typename scalar_t> static V load(const scalar_t* p) { return static_cast<acc_t>(*p); }
  template <typename scalar_t> static void store(scalar_t* p, V v) { *p = static_cast<scalar_t>(v); }
  static V broadcast(acc_t w) { return w; }
  static V sqrt(V v) { return std::sqrt(v); }
};

// sum + a * b for the products of two scalar_t inputs. Where every such product is exact in the
// accumulation type (fp32 in fp64: 48 significand bits and exponents in range; fp16 in fp32: 22
// bits, magnitudes 2^-48 to 2^32) a fused multiply-add rounds once, exactly as the baseline's
// multiply-then-add does. fp64 products are not exact, nor are bf16 ones (bf16 shares fp32's
// exponent range: a product can overflow or fall below fp32's normal range), so those round twice
// at every level.
template <typename scalar_t, typename R>
FU_INLINE typename R::V add_product(typename R::V sum, typename R::V a, typename R::V b) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::Half>) {
    return R::madd_exact(sum, a, b);
  } else {
    return R::madd(sum, a, b);
  }
}

}  // namespace fastunlearn
