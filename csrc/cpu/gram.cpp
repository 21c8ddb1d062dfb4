// Gram matrix of K shard-list vectors in one pass: every element of every shard is read once.
#include "gram.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel_support.h"
#include "simd.h"
#include "shards.h"

namespace fastunlearn {
namespace {

int64_t num_pairs(int64_t k) { return k * (k + 1) / 2; }

// Few vectors: all K streams are read in the same loop, so their loads interleave the way a plain
// dot product's do, and every pair's accumulators stay in registers.
//
// Lanes per pair: as many as AVX2's sixteen registers hold beside one register per vector, so
// neither AVX level spills (SSE2's registers hold half as much: the baseline spills at K = 3 and 4).
// In elements of the accumulation type: fp32 accumulation keeps twice as many in the same
// registers. Element t of a piece goes to lane t % lanes, whatever the level.
template <typename acc_t>
constexpr int interleaved_lanes(int k) {
  return (k == 1 ? 16 : k == 2 ? 8 : 4) * static_cast<int>(sizeof(double) / sizeof(acc_t));
}

constexpr int64_t kPrefetchElements = 2048;

// `acc` holds the pairs' lanes (pair-major) between pieces. `next[a]` is where vector a continues
// after this piece (the next shard), so the prefetch runs ahead across shard boundaries: with many
// small shards every piece would otherwise start cold.
template <CpuIsa kIsa, typename scalar_t, int K>
FU_INLINE void gram_piece_interleaved(const scalar_t* const* src, const scalar_t* const* next, int64_t len,
                                      typename Acc<scalar_t>::type* acc) {
  using acc_t = typename Acc<scalar_t>::type;
  constexpr int L = interleaved_lanes<acc_t>(K);
  constexpr int kBytes = std::min<int>(register_bytes(kIsa), L * sizeof(acc_t));
  using R = Reg<acc_t, kBytes>;
  using V = typename R::V;
  constexpr int W = kBytes / sizeof(acc_t);  // lanes per register
  constexpr int G = L / W;                   // registers per pair
  constexpr int P = K * (K + 1) / 2;
  // A step reads at least one cache line of every vector, and prefetches as many ahead.
  constexpr int S = std::max<int>(L, 64 / sizeof(scalar_t));
  constexpr int kLinesPerStep = S * sizeof(scalar_t) / 64;

  const auto accumulate = [&](V (&sum)[P][G], const V (&x)[K], int g) __attribute__((always_inline)) {
    int p = 0;
#pragma GCC unroll 16
    for (int a = 0; a < K; ++a) {
#pragma GCC unroll 16
      for (int b = a; b < K; ++b, ++p) sum[p][g] = add_product<scalar_t, R>(sum[p][g], x[a], x[b]);
    }
  };

  V sum[P][G];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) sum[p][g] = R::load(acc + p * L + g * W);

  const int64_t full = len - len % S;
  for (int64_t t = 0; t < full; t += S) {
#pragma GCC unroll 16
    for (int a = 0; a < K; ++a) {
#pragma GCC unroll 4
      for (int line = 0; line < kLinesPerStep; ++line) {
        const int64_t ahead = t + kPrefetchElements + line * (64 / sizeof(scalar_t));
        __builtin_prefetch(ahead < len ? src[a] + ahead : next[a] + (ahead - len), 0, 3);
      }
    }
#pragma GCC unroll 16
    for (int u = 0; u < S; u += W) {
      V x[K];
#pragma GCC unroll 16
      for (int a = 0; a < K; ++a) x[a] = R::load(src[a] + t + u);
      accumulate(sum, x, (u % L) / W);
    }
  }
  for (int64_t t = full; t < len; t += W) {  // zero-padded registers: adding 0 * 0 changes nothing
    V x[K];
    for (int a = 0; a < K; ++a) {
      scalar_t padded[W] = {};
      std::memcpy(padded, src[a] + t, std::min<int64_t>(W, len - t) * sizeof(scalar_t));
      x[a] = R::load(padded);
    }
    accumulate(sum, x, static_cast<int>(t % L) / W);
  }

#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) R::store(acc + p * L + g * W, sum[p][g]);
}

template <CpuIsa kIsa, typename scalar_t, int K>
FU_INLINE void gram_chunk_interleaved(const ChunkPlan& plan, int64_t chunk, const void* const* ptrs,
                                      int64_t n, double* partial) {
  using acc_t = typename Acc<scalar_t>::type;
  constexpr int L = interleaved_lanes<acc_t>(K);
  constexpr int P = K * (K + 1) / 2;
  alignas(64) acc_t acc[P * L] = {};
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    const scalar_t* src[K];
    const scalar_t* next[K];
    const int64_t following = shard + 1 < n ? shard + 1 : shard;
    for (int v = 0; v < K; ++v) {
      src[v] = static_cast<const scalar_t*>(ptrs[v * n + shard]) + begin;
      next[v] = static_cast<const scalar_t*>(ptrs[v * n + following]);
    }
    gram_piece_interleaved<kIsa, scalar_t, K>(src, next, end - begin, acc);
  });
  for (int p = 0; p < P; ++p) {
    double total = 0.0;
    for (int j = 0; j < L; ++j) total += static_cast<double>(acc[p * L + j]);
    partial[p] = total;
  }
}

// Many vectors: each block of every vector is staged once in the accumulation type, then the pair
// products run from L1 in register tiles, so each staged value is loaded once per tile rather than
// once per pair. Every pair keeps kStagedLanes lanes (32 bytes) in element order, whatever the tiling
// or level, so the bits depend on neither. The block is staged group-major: lane group q (the
// elements q * L ... q * L + L - 1) of vector v at (q * rows + v) * L, so the groups of consecutive
// vectors lie side by side and one 64-byte register holds the lanes of two pairs, (a, b) and
// (a, b + 1): AVX-512 multiplies a's group, repeated in both halves, by b's and b + 1's.
//
// Elements per staged block: the staged blocks of 16 vectors (16 KB of fp64) stay in L1 beside the
// lines on their way in.
constexpr int64_t kStagedBlock = 128;

template <typename acc_t>
constexpr int kStagedLanes = 32 / sizeof(acc_t);

// A tile is tile_rows row vectors by tile_columns column registers, with one operand register per
// row and column: AVX-512 16 sums and 8 operands of 32 registers; AVX2 8 and 6 of 16 (measured
// faster than 3 x 3), its diagonal tile 10 and 4; SSE2 2 x 2 with two registers per lane group.
constexpr int tile_rows(CpuIsa isa) { return isa == CpuIsa::kBaseline ? 2 : 4; }
constexpr int tile_columns(CpuIsa isa) { return isa == CpuIsa::kAvx512 ? 4 : 2; }

template <CpuIsa kIsa, typename acc_t>
struct StagedShape {
  static constexpr int L = kStagedLanes<acc_t>;
  static constexpr int kBytes = register_bytes(kIsa);
  using R = Reg<acc_t, kBytes>;
  static constexpr int W = kBytes / sizeof(acc_t);        // lanes per register
  static constexpr int CW = W >= L ? W / L : 1;           // column vectors per register
  static constexpr int G = W >= L ? 1 : L / W;            // registers per lane group
  static constexpr int TR = tile_rows(kIsa);
  static constexpr int TC = tile_columns(kIsa);
  static_assert(TR % CW == 0, "a tile TR vectors wide is whole column registers");
  static_assert(CW == 1 || G == 1, "load_twice repeats a whole lane group");
};

// One vector's block into its lane groups, zero-padded to kStagedBlock.
template <CpuIsa kIsa, typename scalar_t, typename acc_t>
FU_INLINE void stage_block(const scalar_t* __restrict src, int64_t len, int64_t rows, acc_t* __restrict dst) {
  constexpr int L = kStagedLanes<acc_t>;
  using S = Reg<acc_t, std::min<int>(register_bytes(kIsa), L * sizeof(acc_t))>;
  constexpr int SW = std::min<int>(register_bytes(kIsa), L * sizeof(acc_t)) / sizeof(acc_t);
  prefetch_ahead<kPrefetchBlocks * kStagedBlock>(src, len);
  int64_t t = 0;
  for (; t + L <= len; t += L, dst += rows * L) {
#pragma GCC unroll 4
    for (int j = 0; j < L; j += SW) S::store(dst + j, S::load(src + t + j));
  }
  for (; t < kStagedBlock; t += L, dst += rows * L) {
    for (int j = 0; j < L; ++j) dst[j] = t + j < len ? static_cast<acc_t>(src[t + j]) : acc_t(0);
  }
}

// Pairs (a0 + i, b0 + c * CW + e) for i < TR, c < C, e < CW; acc holds pair (a, b)'s lanes at
// (a * rows + b) * L. kDiagonal: b0 == a0, and registers wholly below the diagonal are skipped.
template <CpuIsa kIsa, typename scalar_t, int TR, int C, bool kDiagonal>
FU_INLINE void accumulate_tile(const typename Acc<scalar_t>::type* __restrict staged, int64_t a0, int64_t b0,
                               int64_t rows, typename Acc<scalar_t>::type* __restrict acc) {
  using acc_t = typename Acc<scalar_t>::type;
  using Shape = StagedShape<kIsa, acc_t>;
  using R = typename Shape::R;
  using V = typename R::V;
  constexpr int L = Shape::L, W = Shape::W, CW = Shape::CW, G = Shape::G;
  constexpr auto used = [](int i, int c) { return !kDiagonal || c * CW + CW - 1 >= i; };
  V tile[TR][C][G];
#pragma GCC unroll 4
  for (int i = 0; i < TR; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g)
        if (used(i, c)) tile[i][c][g] = R::load(acc + ((a0 + i) * rows + b0 + c * CW) * L + g * W);
  for (int64_t q = 0; q < kStagedBlock / L; ++q) {
    const acc_t* group = staged + q * rows * L;
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      V xa[TR], xb[C];
#pragma GCC unroll 4
      for (int i = 0; i < TR; ++i) {
        if constexpr (CW == 2) {
          xa[i] = R::load_twice(group + (a0 + i) * L);
        } else {
          xa[i] = R::load(group + (a0 + i) * L + g * W);
        }
      }
      // A diagonal tile of one vector per register multiplies the rows by themselves.
      constexpr bool kSquare = kDiagonal && CW == 1;
      static_assert(!kSquare || C <= TR, "a square diagonal tile is no wider than its rows");
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        if constexpr (kSquare) {
          xb[c] = xa[c];
        } else {
          xb[c] = R::load(group + (b0 + c * CW) * L + g * W);
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < TR; ++i)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c)
          if (used(i, c)) tile[i][c][g] = add_product<scalar_t, R>(tile[i][c][g], xa[i], xb[c]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < TR; ++i)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g)
        if (used(i, c)) R::store(acc + ((a0 + i) * rows + b0 + c * CW) * L + g * W, tile[i][c][g]);
}

// The tiles of one row block, from its diagonal to the last column that holds one of the k vectors.
// The diagonal tile is at least TR vectors wide, so that one tile holds the row block's upper
// triangle. Row blocks start at multiples of TR and rows is one, so a tile is whole, or at AVX-512
// (tiles two row blocks wide) the last one of its row block may be TR vectors wide.
template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void accumulate_row_block(const typename Acc<scalar_t>::type* staged, int64_t a0, int64_t k,
                                    int64_t rows, typename Acc<scalar_t>::type* acc) {
  using Shape = StagedShape<kIsa, typename Acc<scalar_t>::type>;
  constexpr int CW = Shape::CW, TR = Shape::TR, TC = Shape::TC;
  constexpr int kWidth = TC * CW, kDiagonalWidth = std::max(kWidth, TR);
  static_assert(TR % kWidth == 0 || kWidth == 2 * TR, "a tile is whole or TR vectors wide");
  if constexpr (kWidth == 2 * TR) {
    if (rows - a0 == TR) {
      accumulate_tile<kIsa, scalar_t, TR, TR / CW, true>(staged, a0, a0, rows, acc);
      return;
    }
  }
  accumulate_tile<kIsa, scalar_t, TR, kDiagonalWidth / CW, true>(staged, a0, a0, rows, acc);
  for (int64_t b0 = a0 + kDiagonalWidth; b0 < k; b0 += kWidth) {
    if constexpr (kWidth == 2 * TR) {
      if (rows - b0 == TR) {
        accumulate_tile<kIsa, scalar_t, TR, TR / CW, false>(staged, a0, b0, rows, acc);
        continue;
      }
    }
    accumulate_tile<kIsa, scalar_t, TR, TC, false>(staged, a0, b0, rows, acc);
  }
}

// Every row block. Where a tile is no wider than half a row block (AVX2), a last row block with no
// more than half a row block of the k vectors is one half-height diagonal tile, so that K = 5, 6, 9,
// 10, ... do not multiply padding rows.
template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void accumulate_block(const typename Acc<scalar_t>::type* staged, int64_t k, int64_t rows,
                                typename Acc<scalar_t>::type* acc) {
  using Shape = StagedShape<kIsa, typename Acc<scalar_t>::type>;
  constexpr int TR = Shape::TR, kHalf = TR / 2;
  for (int64_t a0 = 0; a0 < rows; a0 += TR) {
    if constexpr (Shape::TC * Shape::CW <= kHalf) {
      if (k - a0 <= kHalf) {
        accumulate_tile<kIsa, scalar_t, kHalf, kHalf / Shape::CW, true>(staged, a0, a0, rows, acc);
        continue;
      }
    }
    accumulate_row_block<kIsa, scalar_t>(staged, a0, k, rows, acc);
  }
}

template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void gram_chunk_staged(const ChunkPlan& plan, int64_t chunk, const void* const* ptrs,
                                 int64_t n, int64_t k, double* partial) {
  using acc_t = typename Acc<scalar_t>::type;
  using Shape = StagedShape<kIsa, acc_t>;
  constexpr int L = Shape::L, TR = Shape::TR;
  const int64_t rows = (k + TR - 1) / TR * TR;  // rows past k stay zero
  std::vector<acc_t> staged(rows * kStagedBlock, acc_t(0));
  std::vector<acc_t> acc(rows * rows * L, acc_t(0));  // pairs (a, b) with a <= b are used
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    for (int64_t pos = begin; pos < end; pos += kStagedBlock) {
      const int64_t len = std::min(kStagedBlock, end - pos);
      for (int64_t v = 0; v < k; ++v) {
        const auto* src = static_cast<const scalar_t*>(ptrs[v * n + shard]) + pos;
        stage_block<kIsa>(src, len, rows, staged.data() + v * L);
      }
      accumulate_block<kIsa, scalar_t>(staged.data(), k, rows, acc.data());
    }
  });
  int64_t p = 0;
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t b = a; b < k; ++b, ++p) {
      double sum = 0.0;
      for (int j = 0; j < L; ++j) sum += static_cast<double>(acc[(a * rows + b) * L + j]);
      partial[p] = sum;
    }
  }
}

// Partial Gram (upper triangle, row-major) of one chunk, written to `partial` in double.
template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void gram_chunk(const ChunkPlan& plan, int64_t chunk, const void* const* ptrs, int64_t n,
                          int64_t k, double* partial) {
  switch (k) {
    case 1: return gram_chunk_interleaved<kIsa, scalar_t, 1>(plan, chunk, ptrs, n, partial);
    case 2: return gram_chunk_interleaved<kIsa, scalar_t, 2>(plan, chunk, ptrs, n, partial);
    case 3: return gram_chunk_interleaved<kIsa, scalar_t, 3>(plan, chunk, ptrs, n, partial);
    case 4: return gram_chunk_interleaved<kIsa, scalar_t, 4>(plan, chunk, ptrs, n, partial);
    default: return gram_chunk_staged<kIsa, scalar_t>(plan, chunk, ptrs, n, k, partial);
  }
}

#define FU_GRAM_CHUNK(name, scalar_t)                                                              \
  FU_ISA_CLONES(name, (const ChunkPlan& plan, int64_t chunk, const void* const* ptrs, int64_t n, int64_t k, \
                       double* partial),                                                           \
                (gram_chunk<kIsa, scalar_t>(plan, chunk, ptrs, n, k, partial)))
FU_GRAM_CHUNK(gram_chunk_f64, double)
FU_GRAM_CHUNK(gram_chunk_f32, float)
FU_GRAM_CHUNK(gram_chunk_bf16, c10::BFloat16)
FU_GRAM_CHUNK(gram_chunk_f16, c10::Half)
#undef FU_GRAM_CHUNK

using GramChunkFn = void (*)(const ChunkPlan&, int64_t, const void* const*, int64_t, int64_t,
                             double*);

GramChunkFn gram_chunk_for(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return gram_chunk_f64.get();
    case at::kFloat: return gram_chunk_f32.get();
    case at::kBFloat16: return gram_chunk_bf16.get();
    case at::kHalf: return gram_chunk_f16.get();
    default: TORCH_CHECK_TYPE(false, "fastunlearn: unsupported dtype ", dtype);
  }
}

}  // namespace

at::Tensor gram_cpu(at::TensorList shards, int64_t num_vectors, const Records* records) {
  TORCH_CHECK_VALUE(num_vectors > 0 && shards.size() % num_vectors == 0,
                    "fastunlearn: ", shards.size(), " shards do not split into ", num_vectors,
                    " vectors");
  const int64_t k = num_vectors;
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  const at::ScalarType acc_dtype =
      accumulation_dtype(n > 0 ? shards[0].scalar_type() : at::kFloat);
  if (n == 0) return at::zeros({k, k}, at::TensorOptions().dtype(acc_dtype));
  if (records != nullptr && records->flat()) {
    std::vector<const void*> ptrs(shards.size());
    ChunkPlan plan;
    plan.offsets.reserve(n + 1);
    plan.offsets.push_back(0);
    for (size_t s = 0; s < shards.size(); ++s) ptrs[s] = (*records)[s].data;
    for (int64_t i = 0; i < n; ++i) plan.offsets.push_back(plan.offsets.back() + (*records)[i].numel);
    return gram_pointers(ptrs.data(), plan, k, (*records)[0].dtype).to(acc_dtype);
  }

  const Layouts layouts = layouts_of(shards.slice(0, n));
  const InputPointers in = input_pointers(shards, n, layouts);
  return gram_pointers(in.ptrs.data(), plan_chunks(shards.slice(0, n)), k, shards[0].scalar_type()).to(acc_dtype);
}

at::Tensor gram_pointers(const void* const* ptrs, const ChunkPlan& plan, int64_t num_vectors, at::ScalarType dtype) {
  const int64_t k = num_vectors;
  const int64_t n = static_cast<int64_t>(plan.offsets.size()) - 1;
  const int64_t pairs = num_pairs(k);
  const int64_t chunks = plan.num_chunks();
  std::vector<double> partials(chunks * pairs);
  const GramChunkFn chunk_fn = gram_chunk_for(dtype);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      chunk_fn(plan, c, ptrs, n, k, partials.data() + c * pairs);
    }
  });

  // Second stage: chunks summed in index order, whatever thread produced them.
  std::vector<double> totals(pairs, 0.0);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t p = 0; p < pairs; ++p) totals[p] += partials[c * pairs + p];
  }
  at::Tensor result = at::empty({k, k}, at::TensorOptions().dtype(at::kDouble));
  double* g = result.data_ptr<double>();
  int64_t p = 0;
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t b = a; b < k; ++b, ++p) {
      g[a * k + b] = totals[p];
      g[b * k + a] = totals[p];
    }
  }
  return result;
}

}  // namespace fastunlearn
