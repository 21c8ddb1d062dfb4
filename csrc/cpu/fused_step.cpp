// Fused optimizer steps: the combined gradient lives in registers, never in memory.
#include "fused_step.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
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

// Each step runs one register of lanes at a time: the weighted gradient and the update stay in
// registers, and every parameter and state element is read once, then written once. A piece's
// whole registers run on the level's Reg, its tail on Scalar (simd.h): one expression for both, so
// the tail rounds as the registers do, and bf16/fp16 parameters and state round as c10's
// conversions do at every level.
template <CpuIsa kIsa, typename scalar_t, typename Body>
FU_INLINE void for_each_lane_group(const ChunkPlan& plan, int64_t chunk, const Body& body) {
  using comp_t = typename Compute<scalar_t>::type;
  constexpr int64_t width = register_bytes(kIsa) / sizeof(comp_t);
  for_each_piece(plan, chunk, [&](int64_t shard, int64_t begin, int64_t end) __attribute__((always_inline)) {
    int64_t t = begin;
    for (; t + width <= end; t += width) body(Reg<comp_t, register_bytes(kIsa)>{}, shard, t);
    for (; t < end; ++t) body(Scalar<comp_t>{}, shard, t);
  });
}

// sum_v w[v] * grads[v][shard][t:t + lanes], negated when maximizing (Negate: a std::bool_constant).
template <typename L, typename scalar_t, typename comp_t, typename Negate>
FU_INLINE typename L::V weighted_gradient(const void* const* grads, int64_t k, int64_t n, int64_t shard, int64_t t,
                                          const comp_t* w, Negate) {
  typename L::V d = L::broadcast(w[0]) * L::load(static_cast<const scalar_t*>(grads[shard]) + t);
  for (int64_t v = 1; v < k; ++v) {
    d = d + L::broadcast(w[v]) * L::load(static_cast<const scalar_t*>(grads[v * n + shard]) + t);
  }
  if constexpr (Negate::value) d = -d;
  return d;
}

// f(std::bool_constant<b>...) for the runtime flags b...: one instantiation per combination, so
// that a loop inside f branches on none of them.
template <typename F>
FU_INLINE void with_constants(const F& f) {
  f();
}
template <typename F, typename... Flags>
FU_INLINE void with_constants(const F& f, bool flag, Flags... rest) {
  const auto bind = [&](auto constant) __attribute__((always_inline)) {
    with_constants([&](auto... others) __attribute__((always_inline)) { f(constant, others...); }, rest...);
  };
  flag ? bind(std::true_type{}) : bind(std::false_type{});
}

template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void sgd_chunk(const ChunkPlan& plan, int64_t chunk, void* const* params, void* const* bufs,
                         const void* const* grads, int64_t k, int64_t n, const double* weights,
                         const SgdRule& rule) {
  using comp_t = typename Compute<scalar_t>::type;
  const std::vector<comp_t> w(weights, weights + k);
  const comp_t lr = rule.lr, mu = rule.momentum, keep = 1.0 - rule.dampening, wd = rule.weight_decay;
  // The rule's switches are compile-time constants inside the loop: a branch on each per register
  // measured ~20 % of an fp32 step at the baseline level.
  const auto run = [&](auto negate, auto decays, auto momentum, auto first, auto nesterov) __attribute__((always_inline)) {
    for_each_lane_group<kIsa, scalar_t>(plan, chunk, [&](auto lanes, int64_t shard, int64_t t) __attribute__((always_inline)) {
      using L = decltype(lanes);
      using V = typename L::V;
      auto* p = static_cast<scalar_t*>(params[shard]) + t;
      V d = weighted_gradient<L, scalar_t>(grads, k, n, shard, t, w.data(), negate);
      const V param = L::load(p);
      if constexpr (decltype(decays)::value) d = d + L::broadcast(wd) * param;
      if constexpr (decltype(momentum)::value) {
        auto* b = static_cast<scalar_t*>(bufs[shard]) + t;
        V buf;
        if constexpr (decltype(first)::value) {
          buf = d;
        } else {
          buf = L::broadcast(mu) * L::load(b) + L::broadcast(keep) * d;
        }
        L::store(b, buf);
        if constexpr (decltype(nesterov)::value) {
          d = d + L::broadcast(mu) * buf;
        } else {
          d = buf;
        }
      }
      L::store(p, param - L::broadcast(lr) * d);
    });
  };
  with_constants([&](auto negate, auto decays) __attribute__((always_inline)) {
    if (rule.momentum == 0) return run(negate, decays, std::false_type{}, std::false_type{}, std::false_type{});
    with_constants([&](auto first, auto nesterov) __attribute__((always_inline)) {
      run(negate, decays, std::true_type{}, first, nesterov);
    }, rule.first_step, rule.nesterov);
  }, rule.maximize, rule.weight_decay != 0);
}

template <CpuIsa kIsa, typename scalar_t>
FU_INLINE void adamw_chunk(const ChunkPlan& plan, int64_t chunk, void* const* params, void* const* avgs,
                           void* const* sqs, const void* const* grads, int64_t k, int64_t n,
                           const double* weights, const AdamWRule& rule) {
  using comp_t = typename Compute<scalar_t>::type;
  const std::vector<comp_t> w(weights, weights + k);
  const comp_t decay = 1.0 - rule.lr * rule.weight_decay, b1 = 1.0 - rule.beta1, beta2 = rule.beta2,
               b2 = 1.0 - rule.beta2, step_size = rule.lr / rule.bias_correction1,
               bc2_sqrt = rule.bias_correction2_sqrt, eps = rule.eps;
  with_constants([&](auto negate) __attribute__((always_inline)) {
    for_each_lane_group<kIsa, scalar_t>(plan, chunk, [&](auto lanes, int64_t shard, int64_t t) __attribute__((always_inline)) {
      using L = decltype(lanes);
      using V = typename L::V;
      auto* p = static_cast<scalar_t*>(params[shard]) + t;
      auto* m = static_cast<scalar_t*>(avgs[shard]) + t;
      auto* v = static_cast<scalar_t*>(sqs[shard]) + t;
      const V g = weighted_gradient<L, scalar_t>(grads, k, n, shard, t, w.data(), negate);
      const V m_old = L::load(m);
      const V mt = m_old + L::broadcast(b1) * (g - m_old);
      const V vt = L::broadcast(beta2) * L::load(v) + L::broadcast(b2) * g * g;
      const V denom = L::sqrt(vt) / L::broadcast(bc2_sqrt) + L::broadcast(eps);
      const V pt = L::load(p) * L::broadcast(decay);
      L::store(m, mt);
      L::store(v, vt);
      L::store(p, pt - L::broadcast(step_size) * (mt / denom));
    });
  }, rule.maximize);
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
