// Fused optimizer steps: the combined gradient lives in a block buffer in L1, not in memory.
#include "fused_step.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/records.h"
#include "kernel_support.h"
#include "simd.h"
#include "shards.h"

namespace fastunlearn {
namespace {

struct SgdRule {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
};

struct AdamWRule {
  double lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt;
  bool maximize;
};

// d[0:len] = sum_v w[v] * grads[v][shard][pos:pos+len], in the compute type (`scratch`: a block
// for converting fp16 inputs).
template <CpuIsa kIsa, typename scalar_t, typename comp_t>
FU_INLINE void weighted_gradient(comp_t* __restrict d, comp_t* __restrict scratch, const void* const* grads,
                                 int64_t k, int64_t n, int64_t shard, int64_t pos, int64_t len, const comp_t* w,
                                 bool negate) {
  for (int64_t v = 0; v < k; ++v) {
    const auto* x = fast_to_read<kIsa>(static_cast<const scalar_t*>(grads[v * n + shard]) + pos, scratch, len);
    const comp_t wv = w[v];
    if (v == 0) {
      for (int64_t t = 0; t < len; ++t) d[t] = wv * static_cast<comp_t>(x[t]);
    } else {
      for (int64_t t = 0; t < len; ++t) d[t] += wv * static_cast<comp_t>(x[t]);
    }
  }
  if (negate) {
    for (int64_t t = 0; t < len; ++t) d[t] = -d[t];
  }
}

// Results are computed into block buffers and stored with convert_block (simd.h), so bf16/fp16
// parameters and state round on the level's registers. The read pointers (fast_to_read) may be the
// parameters and state themselves: every element is read before its block is stored.
template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void sgd_chunk(const ChunkPlan& plan, int64_t chunk, void* const* params, void* const* bufs,
                         const void* const* grads, int64_t k, int64_t n, const double* weights,
                         const SgdRule& rule) {
  using comp_t = typename Compute<scalar_t>::type;
  std::vector<comp_t> w(weights, weights + k);
  comp_t d[kBlock], out[kBlock], scratch[kBlock], p_scratch[kBlock];
  const comp_t lr = rule.lr, mu = rule.momentum, keep = 1.0 - rule.dampening, wd = rule.weight_decay;
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    for (int64_t pos = begin; pos < end; pos += kBlock) {
      const int64_t len = std::min(kBlock, end - pos);
      weighted_gradient<kIsa, scalar_t>(d, scratch, grads, k, n, shard, pos, len, w.data(), rule.maximize);
      auto* __restrict p = static_cast<scalar_t*>(params[shard]) + pos;
      const auto* pv = fast_to_read<kIsa>(p, p_scratch, len);
      if (rule.weight_decay != 0) {
        for (int64_t t = 0; t < len; ++t) d[t] += wd * static_cast<comp_t>(pv[t]);
      }
      if (rule.momentum != 0) {
        auto* __restrict b = static_cast<scalar_t*>(bufs[shard]) + pos;
        const auto* bv = fast_to_read<kIsa>(b, scratch, len);
        for (int64_t t = 0; t < len; ++t) {
          const comp_t buf = rule.first_step ? d[t] : mu * static_cast<comp_t>(bv[t]) + keep * d[t];
          out[t] = buf;
          d[t] = rule.nesterov ? d[t] + mu * buf : buf;
        }
        convert_block<kIsa, comp_t>(b, out, len);
      }
      for (int64_t t = 0; t < len; ++t) out[t] = static_cast<comp_t>(pv[t]) - lr * d[t];
      convert_block<kIsa, comp_t>(p, out, len);
    }
  });
}

template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void adamw_chunk(const ChunkPlan& plan, int64_t chunk, void* const* params, void* const* avgs,
                           void* const* sqs, const void* const* grads, int64_t k, int64_t n,
                           const double* weights, const AdamWRule& rule) {
  using comp_t = typename Compute<scalar_t>::type;
  std::vector<comp_t> w(weights, weights + k);
  comp_t d[kBlock], new_m[kBlock], new_v[kBlock], new_p[kBlock], scratch[kBlock];
  comp_t old_m[kBlock], old_v[kBlock], old_p[kBlock];
  const comp_t decay = 1.0 - rule.lr * rule.weight_decay, b1 = 1.0 - rule.beta1, beta2 = rule.beta2,
               b2 = 1.0 - rule.beta2, step_size = rule.lr / rule.bias_correction1,
               bc2_sqrt = rule.bias_correction2_sqrt, eps = rule.eps;
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    for (int64_t pos = begin; pos < end; pos += kBlock) {
      const int64_t len = std::min(kBlock, end - pos);
      weighted_gradient<kIsa, scalar_t>(d, scratch, grads, k, n, shard, pos, len, w.data(), rule.maximize);
      auto* __restrict p = static_cast<scalar_t*>(params[shard]) + pos;
      auto* __restrict m = static_cast<scalar_t*>(avgs[shard]) + pos;
      auto* __restrict v = static_cast<scalar_t*>(sqs[shard]) + pos;
      const auto* pv = fast_to_read<kIsa>(p, old_p, len);
      const auto* mv = fast_to_read<kIsa>(m, old_m, len);
      const auto* vv = fast_to_read<kIsa>(v, old_v, len);
      for (int64_t t = 0; t < len; ++t) {
        const comp_t g = d[t], m_old = static_cast<comp_t>(mv[t]);
        const comp_t mt = m_old + b1 * (g - m_old);
        const comp_t vt = beta2 * static_cast<comp_t>(vv[t]) + b2 * g * g;
        const comp_t denom = std::sqrt(vt) / bc2_sqrt + eps;
        const comp_t pt = static_cast<comp_t>(pv[t]) * decay;
        new_m[t] = mt;
        new_v[t] = vt;
        new_p[t] = pt - step_size * (mt / denom);
      }
      convert_block<kIsa, comp_t>(m, new_m, len);
      convert_block<kIsa, comp_t>(v, new_v, len);
      convert_block<kIsa, comp_t>(p, new_p, len);
    }
  });
}

#define FU_STEP_CHUNKS(suffix, scalar_t)                                                            \
  FU_ISA_CLONES(sgd_chunk_##suffix,                                                                 \
                (const ChunkPlan& plan, int64_t c, void* const* p, void* const* b, const void* const* g, \
                 int64_t k, int64_t n, const double* w, const SgdRule& r),                          \
                (sgd_chunk<kIsa, scalar_t>(plan, c, p, b, g, k, n, w, r)))                             \
  FU_ISA_CLONES(adamw_chunk_##suffix,                                                               \
                (const ChunkPlan& plan, int64_t c, void* const* p, void* const* m, void* const* v,  \
                 const void* const* g, int64_t k, int64_t n, const double* w, const AdamWRule& r),  \
                (adamw_chunk<kIsa, scalar_t>(plan, c, p, m, v, g, k, n, w, r)))
FU_STEP_CHUNKS(f64, double)
FU_STEP_CHUNKS(f32, float)
FU_STEP_CHUNKS(bf16, c10::BFloat16)
FU_STEP_CHUNKS(f16, c10::Half)
#undef FU_STEP_CHUNKS

using SgdChunkFn = void (*)(const ChunkPlan&, int64_t, void* const*, void* const*, const void* const*,
                            int64_t, int64_t, const double*, const SgdRule&);
using AdamWChunkFn = void (*)(const ChunkPlan&, int64_t, void* const*, void* const*, void* const*,
                              const void* const*, int64_t, int64_t, const double*, const AdamWRule&);

template <typename Fn>
Fn pick(at::ScalarType dtype, const IsaClones<Fn>& f64, const IsaClones<Fn>& f32, const IsaClones<Fn>& bf16,
        const IsaClones<Fn>& f16) {
  switch (dtype) {
    case at::kDouble: return f64.get();
    case at::kFloat: return f32.get();
    case at::kBFloat16: return bf16.get();
    case at::kHalf: return f16.get();
    default: TORCH_CHECK_TYPE(false, "fastunlearn: unsupported dtype ", dtype);
  }
}

// A step's memory as flat runs, one per parameter: the parameters, their state lists, and the K
// gradient vectors, with the chunk plan over the parameters. The op (library.cpp) sends only steps
// whose parameters are dense and whose state shares each parameter's layout and dtype here. Where
// every tensor is row-major dense the pointers come from the records the checks read (one visit
// per tensor per call); otherwise gradients in another layout are read through dense copies.
struct StepMemory {
  int64_t n;
  std::vector<void*> params;
  std::vector<std::vector<void*>> states;
  InputPointers grads;
  std::vector<double> weights;
  ChunkPlan plan;
};

StepMemory step_memory(at::TensorList params, std::initializer_list<at::TensorList> states,
                       const at::Tensor& weights, at::TensorList grads, int64_t k) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK_VALUE(k > 0 && static_cast<int64_t>(grads.size()) == k * n, "fastunlearn: ",
                    grads.size(), " gradient shards for ", k, " vectors of ", n, " params");
  TORCH_CHECK_VALUE(weights.numel() == k, "fastunlearn: weights must have ", k, " entries, got ",
                    weights.numel());
  StepMemory m;
  m.n = n;
  // The few weights are read on the host (CPU tensors): a converted copy would cost an allocation.
  m.weights.resize(k);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weights.scalar_type(), "step_weights", [&] {
    const at::Tensor w = weights.contiguous();
    for (int64_t v = 0; v < k; ++v) m.weights[v] = static_cast<double>(w.const_data_ptr<scalar_t>()[v]);
  });
  const Records p(params), g(grads);
  bool flat = p.flat() && g.flat();
  std::vector<Records> state_records;
  state_records.reserve(states.size());
  for (at::TensorList state : states) {
    state_records.emplace_back(state);
    flat = flat && state_records.back().flat();
  }
  const auto writable = [&](const Records& r, at::TensorList tensors) {
    std::vector<void*> out(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      out[i] = flat ? const_cast<void*>(r[i].data) : tensors[i].data_ptr();
    }
    return out;
  };
  m.params = writable(p, params);
  size_t j = 0;
  for (at::TensorList state : states) m.states.push_back(writable(state_records[j++], state));
  if (flat) {
    m.grads.ptrs.resize(grads.size());
    for (size_t s = 0; s < grads.size(); ++s) m.grads.ptrs[s] = g[s].data;
    m.plan.offsets.reserve(n + 1);
    m.plan.offsets.push_back(0);
    for (int64_t i = 0; i < n; ++i) m.plan.offsets.push_back(m.plan.offsets.back() + p[i].numel);
  } else {
    m.grads = input_pointers(grads, n, layouts_of(params));
    m.plan = plan_chunks(params);
  }
  return m;
}

}  // namespace

void sgd_step_cpu(at::TensorList params, at::TensorList momentum_buffers, const at::Tensor& weights,
                  at::TensorList grads, int64_t num_vectors, double lr, double momentum,
                  double dampening, bool nesterov, double weight_decay, bool maximize,
                  bool first_step) {
  if (params.empty()) return;
  // Without momentum the buffer pointers are the parameters' (never written through).
  const StepMemory m = momentum != 0 ? step_memory(params, {momentum_buffers}, weights, grads, num_vectors)
                                     : step_memory(params, {}, weights, grads, num_vectors);
  void* const* b = momentum != 0 ? m.states[0].data() : m.params.data();
  const SgdRule rule{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step};
  const SgdChunkFn fn = pick<SgdChunkFn>(params[0].scalar_type(), sgd_chunk_f64, sgd_chunk_f32,
                                         sgd_chunk_bf16, sgd_chunk_f16);
  at::parallel_for(0, m.plan.num_chunks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      fn(m.plan, c, m.params.data(), b, m.grads.ptrs.data(), num_vectors, m.n, m.weights.data(), rule);
    }
  });
}

void adamw_step_cpu(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    const at::Tensor& weights, at::TensorList grads, int64_t num_vectors,
                    double lr, double beta1, double beta2, double eps, double weight_decay,
                    int64_t step, bool maximize) {
  if (params.empty()) return;
  const StepMemory m = step_memory(params, {exp_avgs, exp_avg_sqs}, weights, grads, num_vectors);
  const AdamWRule rule{lr, beta1, beta2, eps, weight_decay,
                       1.0 - std::pow(beta1, static_cast<double>(step)),
                       std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))), maximize};
  const AdamWChunkFn fn = pick<AdamWChunkFn>(params[0].scalar_type(), adamw_chunk_f64, adamw_chunk_f32,
                                             adamw_chunk_bf16, adamw_chunk_f16);
  at::parallel_for(0, m.plan.num_chunks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      fn(m.plan, c, m.params.data(), m.states[0].data(), m.states[1].data(), m.grads.ptrs.data(),
         num_vectors, m.n, m.weights.data(), rule);
    }
  });
}

}  // namespace fastunlearn
