// Weighted sums of K shard-list vectors into M outputs, one pass over the inputs.
#include "combine.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernel_support.h"
#include "simd.h"
#include "shards.h"

namespace fastunlearn {
namespace {

constexpr int kMaxStreamedInputs = 4;

// One output of at most four inputs (combine_, the projections): a single loop per piece reads
// every input of a vector and writes its output (in place is safe element by element), with no
// staging and no per-block loop overheads, which dominate with short shards. It computes in comp_t
// on the level's widest registers, operation for operation as the staged loop (no fused
// multiply-add), so the bits are the same; bf16/fp16 convert to fp32 and back as c10 does. The
// level's own registers matter: GCC lowers a memcpy of a vector wider than them through the stack.
template <CpuIsa kIsa, typename scalar_t, typename comp_t, int K>
FU_INLINE void combine_piece_streamed(scalar_t* y, const scalar_t* const* x, const comp_t* w, int64_t len) {
  using R = Reg<comp_t, register_bytes(kIsa)>;
  using V = typename R::V;
  constexpr int64_t width = register_bytes(kIsa) / sizeof(comp_t);
  V weight[K];
#pragma GCC unroll 4
  for (int v = 0; v < K; ++v) weight[v] = R::broadcast(w[v]);
  int64_t t = 0;
#pragma GCC unroll 2
  for (; t + width <= len; t += width) {
    V acc = weight[0] * R::load(x[0] + t);
#pragma GCC unroll 4
    for (int v = 1; v < K; ++v) acc = acc + weight[v] * R::load(x[v] + t);
    R::store(y + t, acc);
  }
  for (; t < len; ++t) {
    comp_t acc = w[0] * static_cast<comp_t>(x[0][t]);
    for (int v = 1; v < K; ++v) acc = acc + w[v] * static_cast<comp_t>(x[v][t]);
    y[t] = static_cast<scalar_t>(acc);
  }
}

template <CpuIsa kIsa, typename scalar_t, typename comp_t>
FU_INLINE void combine_chunk_streamed(const ChunkPlan& plan, int64_t chunk, void* const* outs,
                                      const void* const* ins, int64_t k, int64_t n, const comp_t* w) {
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    const scalar_t* x[kMaxStreamedInputs];
    for (int64_t v = 0; v < k; ++v) x[v] = static_cast<const scalar_t*>(ins[v * n + shard]) + begin;
    scalar_t* y = static_cast<scalar_t*>(outs[shard]) + begin;
    switch (k) {
      case 1: return combine_piece_streamed<kIsa, scalar_t, comp_t, 1>(y, x, w, end - begin);
      case 2: return combine_piece_streamed<kIsa, scalar_t, comp_t, 2>(y, x, w, end - begin);
      case 3: return combine_piece_streamed<kIsa, scalar_t, comp_t, 3>(y, x, w, end - begin);
      default: return combine_piece_streamed<kIsa, scalar_t, comp_t, 4>(y, x, w, end - begin);
    }
  });
}

// Every input of a block is read before any output of it is written, so an output that is one of
// the inputs (same shard, same memory) is updated correctly.
template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void combine_chunk(const ChunkPlan& plan, int64_t chunk, void* const* outs,
                             int64_t num_outs, const void* const* ins, int64_t k, int64_t n,
                             const double* weights) {
  using comp_t = typename Compute<scalar_t>::type;
  std::vector<comp_t> w(weights, weights + num_outs * k);
  if (num_outs == 1 && k <= kMaxStreamedInputs) {
    return combine_chunk_streamed<kIsa, scalar_t>(plan, chunk, outs, ins, k, n, w.data());
  }
  std::vector<comp_t> sums(num_outs * kBlock);
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    for (int64_t pos = begin; pos < end; pos += kBlock) {
      const int64_t len = std::min(kBlock, end - pos);
      for (int64_t m = 0; m < num_outs; ++m) {
        comp_t* __restrict acc = sums.data() + m * kBlock;
        const comp_t* wm = w.data() + m * k;
        const auto* __restrict x0 = static_cast<const scalar_t*>(ins[shard]) + pos;
        if (m == 0) prefetch_ahead(x0, len);
        for (int64_t t = 0; t < len; ++t) acc[t] = wm[0] * static_cast<comp_t>(x0[t]);
        for (int64_t v = 1; v < k; ++v) {
          const auto* __restrict x = static_cast<const scalar_t*>(ins[v * n + shard]) + pos;
          if (m == 0) prefetch_ahead(x, len);
          const comp_t wv = wm[v];
          for (int64_t t = 0; t < len; ++t) acc[t] += wv * static_cast<comp_t>(x[t]);
        }
      }
      for (int64_t m = 0; m < num_outs; ++m) {
        const comp_t* __restrict acc = sums.data() + m * kBlock;
        auto* __restrict y = static_cast<scalar_t*>(outs[m * n + shard]) + pos;
        for (int64_t t = 0; t < len; ++t) y[t] = static_cast<scalar_t>(acc[t]);
      }
    }
  });
}

#define FU_COMBINE_CHUNK(name, scalar_t)                                                         \
  FU_ISA_CLONES(name, (const ChunkPlan& plan, int64_t chunk, void* const* outs, int64_t num_outs,  \
                       const void* const* ins, int64_t k, int64_t n, const double* weights),       \
                (combine_chunk<kIsa, scalar_t>(plan, chunk, outs, num_outs, ins, k, n, weights)))
FU_COMBINE_CHUNK(combine_chunk_f64, double)
FU_COMBINE_CHUNK(combine_chunk_f32, float)
FU_COMBINE_CHUNK(combine_chunk_bf16, c10::BFloat16)
FU_COMBINE_CHUNK(combine_chunk_f16, c10::Half)
#undef FU_COMBINE_CHUNK

using CombineChunkFn = void (*)(const ChunkPlan&, int64_t, void* const*, int64_t,
                                const void* const*, int64_t, int64_t, const double*);

CombineChunkFn combine_chunk_for(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return combine_chunk_f64.get();
    case at::kFloat: return combine_chunk_f32.get();
    case at::kBFloat16: return combine_chunk_bf16.get();
    case at::kHalf: return combine_chunk_f16.get();
    default: TORCH_CHECK_TYPE(false, "fastunlearn: unsupported dtype ", dtype);
  }
}

}  // namespace

void combine_cpu(at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t num_vectors,
                 const Records* out_records, const Records* records) {
  const int64_t k = num_vectors;
  TORCH_CHECK_VALUE(k > 0 && shards.size() % k == 0, "fastunlearn: ", shards.size(),
                    " shards do not split into ", k, " vectors");
  const int64_t n = static_cast<int64_t>(shards.size()) / k;
  if (n == 0) return;
  TORCH_CHECK_VALUE(outs.size() % n == 0, "fastunlearn: ", outs.size(),
                    " output shards do not match ", n, " input shards");
  const int64_t num_outs = static_cast<int64_t>(outs.size()) / n;
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == num_outs && weights.size(1) == k,
                    "fastunlearn: weights must have shape (", num_outs, ", ", k, "), got ",
                    weights.sizes());

  // The few weights are read on the host directly: a converted copy would cost an allocation and a
  // kernel, which on short lists is a visible share of the call.
  std::vector<double> w(num_outs * k);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weights.scalar_type(), "combine_weights", [&] {
    const auto values = weights.accessor<scalar_t, 2>();
    for (int64_t m = 0; m < num_outs; ++m) {
      for (int64_t v = 0; v < k; ++v) w[m * k + v] = static_cast<double>(values[m][v]);
    }
  });

  if (out_records != nullptr && records != nullptr && out_records->flat() && records->flat()) {
    std::vector<void*> out_ptrs(outs.size());
    std::vector<const void*> in_ptrs(shards.size());
    ChunkPlan plan;
    plan.offsets.reserve(n + 1);
    plan.offsets.push_back(0);
    for (size_t s = 0; s < outs.size(); ++s) out_ptrs[s] = const_cast<void*>((*out_records)[s].data);
    for (size_t s = 0; s < shards.size(); ++s) in_ptrs[s] = (*records)[s].data;
    for (int64_t i = 0; i < n; ++i) plan.offsets.push_back(plan.offsets.back() + (*records)[i].numel);
    return combine_pointers(out_ptrs.data(), num_outs, in_ptrs.data(), plan, k, w.data(), (*records)[0].dtype);
  }
  // Each shard index is computed in the layout of its first output (if dense); outputs that are
  // not in it are computed into a temporary and copied back after the pass.
  const Layouts layouts = layouts_of(outs.slice(0, n));
  OutputPointers out = output_pointers(outs, n, layouts);
  const InputPointers in = input_pointers(shards, n, layouts);
  combine_pointers(out.ptrs.data(), num_outs, in.ptrs.data(), plan_chunks(outs.slice(0, n)), k, w.data(),
                   shards[0].scalar_type());
  out.finish();
}

void combine_pointers(void* const* out, int64_t num_outs, const void* const* in, const ChunkPlan& plan,
                      int64_t num_vectors, const double* weights, at::ScalarType dtype) {
  const int64_t n = static_cast<int64_t>(plan.offsets.size()) - 1;
  const CombineChunkFn chunk_fn = combine_chunk_for(dtype);
  at::parallel_for(0, plan.num_chunks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      chunk_fn(plan, c, out, num_outs, in, num_vectors, n, weights);
    }
  });
}

}  // namespace fastunlearn
