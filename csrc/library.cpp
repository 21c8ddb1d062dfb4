// torch.ops.fastunlearn: the one route of every op. Schemas live here; each dispatch key has one
// kernel: Autograd (gram's backward, else straight through), CPU and CUDA (validate, bump the
// versions of what will be written, then run the engine on the chosen backend), Meta (shapes, for
// fake tensors and torch.compile). Everything is checked before anything is written or any version
// counter moves. The public Python functions (fastunlearn/ops.py) only normalise arguments.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtypes.h"
#include "common/layouts.h"
#include "common/shard_table.h"
#include "common/validate.h"
#include "cpu/isa.h"
#include "engine.h"
#include "python_hooks.h"

namespace fastunlearn {
namespace {

using at::Tensor;
using at::TensorList;

// ---- names in error messages --------------------------------------------------------------------

std::string vectors_name(int64_t k) { return indexed("vectors", k); }
VectorNames pair_names(const char* first, const char* second) {
  return [first, second](int64_t k) { return std::string(k == 0 ? first : second); };
}
std::string directions_name(int64_t k) { return k == 0 ? std::string("g") : indexed("directions", k - 1); }

// Inference tensors have no version counter (they are written only inside inference mode, which
// check_writable ensured). Long lists are bumped on the intra-op threads, prefetched ahead.
void bump_versions(TensorList written) {
  constexpr int64_t kPrefetch = 12, kParallel = 2048;
  at::parallel_for(0, static_cast<int64_t>(written.size()), kParallel, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + kPrefetch < end) __builtin_prefetch(written[i + kPrefetch].unsafeGetTensorImpl());
      c10::TensorImpl* impl = written[i].unsafeGetTensorImpl();
      if (impl->version_counter().enabled()) impl->bump_version();
    }
  });
}

// ---- CPU and CUDA kernels -------------------------------------------------------------------------

Tensor gram_kernel(TensorList shards, int64_t k, std::optional<at::ScalarType> dtype, c10::string_view backend) {
  const Records records(shards);
  const int64_t n = check_vectors(records, k, vectors_name);
  const Backend& b = backend_for(backend, records[0].device);
  return engine::gram(b, records, k).to(dtype.value_or(engine::result_dtype_of(records, n)));
}

std::vector<Tensor> combine_kernel(TensorList shards, const Tensor& weights, int64_t k, c10::string_view backend) {
  const Records records(shards);
  const int64_t n = check_vectors(records, k, vectors_name);
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(1) == k, "fastunlearn: combine weights must be M x ", k);
  TORCH_CHECK_VALUE(weights.device() == records[0].device, "weights are on ", weights.device(),
                    " but the vectors are on ", records[0].device);
  std::vector<Tensor> outs;
  outs.reserve(weights.size(0) * n);
  for (int64_t m = 0; m < weights.size(0); ++m) {
    for (int64_t i = 0; i < n; ++i) outs.push_back(at::empty_like(shards[i]));
  }
  engine::combine(backend_for(backend, records[0].device), Records(outs), weights, records, k);
  return outs;
}

// The records of an op that writes `out` from K vectors (`shards`, read once), checked in the order
// the errors are most useful. Where `out` is the first vector itself (an update in place), its
// records are the first vector's.
struct Update {
  Records in, out;
  int64_t n;
};

bool is_first_vector(TensorList out, TensorList shards) {
  if (out.size() > shards.size()) return false;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!out[i].is_same(shards[i])) return false;
  }
  return true;
}

Update check_update(TensorList out, const char* what, Records in, int64_t k, const VectorNames& name) {
  const int64_t n = check_vectors(in, k, name);
  TORCH_CHECK_VALUE(static_cast<int64_t>(out.size()) == n, what, " has ", out.size(), " shards but ", name(0),
                    " has ", n);
  const bool in_place = is_first_vector(out, in.tensors());
  Records written = in_place ? Records(in, n) : Records(out);
  if (!in_place) check_outputs_match(written, in, what, name(0));
  check_writable(written, what);
  // An output that is the first vector was checked as an output already.
  check_not_differentiated(in, in_place ? n : 0, n, name);
  check_overlaps(written, in, n, what, name);
  return {std::move(in), std::move(written), n};
}

void combine_inplace_kernel(TensorList out, const Tensor& weights, TensorList shards, int64_t k,
                            c10::string_view backend) {
  const Update u = check_update(out, "out", Records(shards), k, vectors_name);
  check_weights(weights, k, u.in[0].device);
  const Backend& b = backend_for(backend, u.in[0].device);
  bump_versions(out);
  engine::combine(b, u.out, weights.reshape({1, k}), u.in, k);
}

// Gram pass, weighting, combine pass into the update's outputs (validated).
engine::Result run_engine(const Update& u, int64_t k, engine::Weighting weighting, double eps,
                          const std::optional<Tensor>& order, const Backend& b) {
  bump_versions(u.out.tensors());
  return engine::aggregate(b, u.out, u.in, k, weighting, eps, order);
}

Tensor project_kernel(TensorList g, TensorList r, c10::string_view mode, double eps, c10::string_view backend) {
  const engine::Weighting weighting = engine::projection(mode);
  const Update u = check_update(g, "g", Records(g, r), 2, pair_names("g", "r"));
  return run_engine(u, 2, weighting, eps, std::nullopt, backend_for(backend, u.in[0].device)).stats;
}

Tensor project_normal_kernel(TensorList g, TensorList directions, int64_t m, double eps, c10::string_view backend) {
  const Update u = check_update(g, "g", Records(g, directions), m + 1, directions_name);
  return run_engine(u, m + 1, weightings::kSpanComplement, eps, std::nullopt, backend_for(backend, u.in[0].device))
      .stats;
}

// The order indexes the Gram: rows that are not permutations would read out of bounds. Checked on
// CPU only (elsewhere that would be a host sync; fastunlearn.pcgrad_order makes valid ones).
void check_order(const Tensor& order, int64_t k, const at::Device& device) {
  TORCH_CHECK_VALUE(order.dim() == 2 && order.size(0) == k && order.size(1) == k && order.scalar_type() == at::kLong &&
                        order.device() == device,
                    "fastunlearn: order must be a ", k, " x ", k, " int64 tensor on ", device);
  if (!order.device().is_cpu()) return;
  const Tensor o = order.contiguous();
  const int64_t* values = o.const_data_ptr<int64_t>();
  std::vector<char> seen(k);
  for (int64_t i = 0; i < k; ++i) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t t = 0; t < k; ++t) {
      const int64_t v = values[i * k + t];
      TORCH_CHECK_VALUE(v >= 0 && v < k && !seen[v], "each row of order must be a permutation of 0..K-1");
      seen[v] = 1;
    }
  }
}

// Without an order, each task's order is a random permutation drawn on the vectors' device
// (fastunlearn.pcgrad_order's draw), after every check: a rejected call leaves the generator as it was.
std::tuple<Tensor, Tensor> pcgrad_kernel(TensorList out, TensorList shards, int64_t k,
                                         const std::optional<Tensor>& order, c10::string_view reduction, double eps,
                                         c10::string_view backend, const std::optional<at::Generator>& generator) {
  const engine::Weighting weighting = engine::pcgrad(reduction);
  const Update u = check_update(out, "out", Records(shards), k, vectors_name);
  if (order.has_value()) check_order(*order, k, u.in[0].device);
  const Backend& b = backend_for(backend, u.in[0].device);
  const Tensor drawn = order.has_value() ? *order
                                         : at::rand({k, k}, generator, at::TensorOptions().device(u.in[0].device))
                                               .argsort(/*dim=*/1, /*descending=*/false);
  engine::Result result = run_engine(u, k, weighting, eps, drawn, b);
  return {result.gram, result.weights};
}

std::tuple<Tensor, Tensor> aggregate_kernel(TensorList out, TensorList shards, int64_t k, c10::string_view weighting,
                                            double eps, const std::optional<Tensor>& order, c10::string_view backend) {
  const engine::Weighting w = engine::parse(weighting);
  engine::check_arity(w, k);
  const Update u = check_update(out, "out", Records(shards), k, vectors_name);
  if (order.has_value()) check_order(*order, k, u.in[0].device);
  TORCH_CHECK_VALUE(order.has_value() || !engine::needs_order(w), "fastunlearn: weighting '", std::string(weighting),
                    "' needs an order");
  engine::Result result = run_engine(u, k, w, eps, order, backend_for(backend, u.in[0].device));
  return {result.gram, result.weights};
}

// The checks of a fused optimizer step, before anything is written: each gradient pairs with its
// parameter, the weights are (K,) on the parameters' device (one device per call), parameters are
// writable, and no gradient shares memory with a parameter other than its own. The step ops run
// them themselves, with the state's checks (check_state); fastunlearn/optim.py runs both, through
// check_step, over every call of a step that takes several before the first is made.
void check_step_records(const Records& p, const Records& g, int64_t k, const std::optional<Tensor>& weights) {
  const int64_t n = static_cast<int64_t>(p.size());
  TORCH_CHECK_VALUE(k >= 1, "fastunlearn: a step takes at least one gradient vector, got num_vectors=", k);
  TORCH_CHECK_VALUE(static_cast<int64_t>(g.size()) == k * n, "fastunlearn: ", g.size(), " gradients for ", k,
                    " vectors of ", n, " parameters");
  if (n == 0) return;
  const auto describe = [](const Tensor& t) {
    std::ostringstream out;
    out << t.sizes() << " " << python_name(t.scalar_type()) << " on " << t.device();
    return out.str();
  };
  for (int64_t s = 0; s < k * n; ++s) {
    const int64_t i = s % n;
    TORCH_CHECK_TYPE(g[s].layout == at::kStrided, "the gradient for parameter ", i, " has layout ",
                     g[s].layout == at::kSparse ? "torch.sparse_coo" : c10::str(g[s].layout),
                     "; fastunlearn.optim updates dense gradients only (torch.optim.SGD and SparseAdam take sparse "
                     "ones)");
    TORCH_CHECK_VALUE(g.same_shape(s, p, i) && g[s].dtype == p[i].dtype && g[s].device == p[i].device,
                      vectors_name(s / n), " shard ", i, " is ", describe(g.tensors()[s]), " but parameter ", i,
                      " is ", describe(p.tensors()[i]));
  }
  if (weights.has_value()) {
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(p[i].device == weights->device(), "parameter ", i, " is on ", p[i].device,
                        " but the weights are on ", weights->device(),
                        "; step_combined takes the parameters of one device (one optimizer per device)");
    }
    check_weights(*weights, k, p[0].device);
  }
  check_writable(p, "param");
  check_overlaps(p, g, n, "parameter", vectors_name);
}

// Optimizer state (momentum buffers, moments) pairs with the parameters: one tensor of each
// parameter's shape on its device, or none at all where `optional` (SGD without momentum).
void check_state(const Records& p, TensorList state, const char* what, bool optional = false) {
  if (optional && state.empty()) return;
  TORCH_CHECK_VALUE(state.size() == p.size(), "fastunlearn: ", state.size(), " ", what, " tensors for ", p.size(),
                    " parameters");
  const Records s(state);
  for (size_t i = 0; i < p.size(); ++i) {
    TORCH_CHECK_VALUE(s.same_shape(i, p, i) && s[i].device == p[i].device, "fastunlearn: ", what, " ", i,
                      " has shape ", state[i].sizes(), " on ", s[i].device, " but parameter ", i, " has shape ",
                      p.tensors()[i].sizes(), " on ", p[i].device);
  }
  check_writable(s, what);
}

// The op form, for a step of several calls (fastunlearn/optim.py): the whole step's parameters and
// gradients, or one call's with its state lists (state-major: list j is states[j * n : (j + 1) * n],
// named state_names[j]).
void check_step(TensorList params, TensorList grads, int64_t k, const std::optional<Tensor>& weights,
                TensorList states, const c10::List<std::string>& state_names) {
  const Records p(params);
  check_step_records(p, Records(grads), k, weights);
  const size_t n = params.size(), lists = state_names.size();
  TORCH_CHECK_VALUE(states.size() == lists * n || (n == 0 && states.empty()), "fastunlearn: ", states.size(),
                    " state tensors for ", lists, " lists of ", n, " parameters");
  for (size_t j = 0; j < lists && n > 0; ++j) {
    const std::string name = state_names.get(j);
    check_state(p, states.slice(j * n, n), name.c_str());
  }
}

// The native kernels walk each parameter and its state as one flat run of memory: a parameter
// that is not dense, or state that no longer shares its layout and dtype (after `p.data` was
// replaced in another memory format), sends its part of the step to the torch backend instead.
const Backend& step_backend(c10::string_view name, TensorList params, std::initializer_list<TensorList> states) {
  const Records p(params);
  const Backend& chosen = backend_for(name, p[0].device);
  if (name == "torch") return chosen;
  std::vector<Records> state_records;
  state_records.reserve(states.size());
  for (TensorList state : states) state_records.emplace_back(state);
  for (size_t i = 0; i < params.size(); ++i) {
    bool walkable = p[i].contiguous || params[i].is_non_overlapping_and_dense();
    size_t j = 0;
    for (TensorList state : states) {
      const Records& s = state_records[j++];
      // Row-major tensors of one shape (checked) share their layout; others are compared in full.
      walkable = walkable && (state.empty() || (s[i].dtype == p[i].dtype &&
                                                ((s[i].contiguous && p[i].contiguous) ||
                                                 (state[i].sizes() == params[i].sizes() &&
                                                  state[i].strides() == params[i].strides()))));
    }
    if (!walkable) return backend_for("torch", p[i].device);
  }
  return chosen;
}

// The GPU shard table (common/shard_table.h) of `rows` rows of n dense tensors, paired by index, for
// the Triton launchers (the CUDA binding builds it directly).
std::tuple<Tensor, int64_t, int64_t> shard_table_kernel(TensorList tensors, int64_t rows, int64_t chunk) {
  TORCH_CHECK_VALUE(rows > 0 && tensors.size() % rows == 0, "fastunlearn: ", tensors.size(),
                    " tensors do not split into ", rows, " rows");
  const int64_t n = static_cast<int64_t>(tensors.size()) / rows;
  std::vector<const void*> addresses(tensors.size());
  std::vector<int64_t> sizes(n);
  for (size_t s = 0; s < tensors.size(); ++s) addresses[s] = tensors[s].const_data_ptr();
  for (int64_t i = 0; i < n; ++i) sizes[i] = tensors[i].numel();
  const Tensor table = build_shard_table(addresses, rows, sizes, n > 0 ? tensors[0].element_size() : 1, chunk);
  const int64_t* header = table.const_data_ptr<int64_t>();  // a host tensor the builder just wrote
  return {table.slice(0, 2), header[0], header[1]};
}

// The parameters of one dtype with their state and gradients (in order), and the backend that
// steps them: the kernels walk one dtype per call, and a model with bf16 weights and fp32 adapters
// or norms gives a step of both. Every part's backend is chosen before anything is written.
struct StepPart {
  StepPart() = default;
  StepPart(const StepPart&) = delete;  // the lists point into the owned vectors: a copy would dangle
  StepPart& operator=(const StepPart&) = delete;
  StepPart(StepPart&&) = default;
  StepPart& operator=(StepPart&&) = default;

  std::vector<Tensor> owned_params, owned_grads;  // where the call's lists are split by dtype
  std::vector<std::vector<Tensor>> owned_states;
  TensorList params, grads;
  std::vector<TensorList> states;
  const Backend* backend = nullptr;
};

std::vector<StepPart> step_parts(c10::string_view backend, const Records& p, TensorList grads, int64_t k,
                                 std::initializer_list<TensorList> states) {
  const int64_t n = static_cast<int64_t>(p.size());
  std::vector<at::ScalarType> dtypes;
  for (int64_t i = 0; i < n; ++i) {
    if (std::find(dtypes.begin(), dtypes.end(), p[i].dtype) == dtypes.end()) dtypes.push_back(p[i].dtype);
  }
  std::vector<StepPart> parts(dtypes.size());  // never resized: the lists below point into the parts
  if (dtypes.size() == 1) {
    parts[0].params = p.tensors(), parts[0].grads = grads, parts[0].states = states;
  } else {
    for (size_t d = 0; d < dtypes.size(); ++d) {
      StepPart& part = parts[d];
      std::vector<int64_t> index;
      for (int64_t i = 0; i < n; ++i) {
        if (p[i].dtype == dtypes[d]) index.push_back(i);
      }
      for (const int64_t i : index) part.owned_params.push_back(p.tensors()[i]);
      for (int64_t v = 0; v < k; ++v) {
        for (const int64_t i : index) part.owned_grads.push_back(grads[v * n + i]);
      }
      for (TensorList state : states) {
        std::vector<Tensor>& owned = part.owned_states.emplace_back();
        if (!state.empty()) {
          for (const int64_t i : index) owned.push_back(state[i]);
        }
      }
      part.params = part.owned_params, part.grads = part.owned_grads;
      part.states.assign(part.owned_states.begin(), part.owned_states.end());
    }
  }
  for (StepPart& part : parts) {
    if (part.states.size() == 1) part.backend = &step_backend(backend, part.params, {part.states[0]});
    else part.backend = &step_backend(backend, part.params, {part.states[0], part.states[1]});
  }
  return parts;
}

void sgd_step_kernel(TensorList params, TensorList momentum_buffers, const Tensor& weights, TensorList grads,
                     int64_t k, double lr, double momentum, double dampening, bool nesterov, double weight_decay,
                     bool maximize, bool first_step, c10::string_view backend) {
  const Records p(params);
  check_step_records(p, Records(grads), k, weights);
  check_state(p, momentum_buffers, "momentum buffer", /*optional=*/momentum == 0);
  if (params.empty()) return;
  const std::vector<StepPart> parts = step_parts(backend, p, grads, k, {momentum_buffers});
  bump_versions(params);
  bump_versions(momentum_buffers);
  for (const StepPart& part : parts) {
    part.backend->sgd_step(part.params, part.states[0], weights, part.grads, k, lr, momentum, dampening, nesterov,
                           weight_decay, maximize, first_step);
  }
}

void adamw_step_kernel(TensorList params, TensorList exp_avgs, TensorList exp_avg_sqs, const Tensor& weights,
                       TensorList grads, int64_t k, double lr, double beta1, double beta2, double eps,
                       double weight_decay, int64_t step, bool maximize, c10::string_view backend) {
  TORCH_CHECK_VALUE(step >= 1, "fastunlearn: AdamW step count must be >= 1, got ", step);
  const Records p(params);
  check_step_records(p, Records(grads), k, weights);
  check_state(p, exp_avgs, "exp_avg");
  check_state(p, exp_avg_sqs, "exp_avg_sq");
  if (params.empty()) return;
  const std::vector<StepPart> parts = step_parts(backend, p, grads, k, {exp_avgs, exp_avg_sqs});
  bump_versions(params);
  bump_versions(exp_avgs);
  bump_versions(exp_avg_sqs);
  for (const StepPart& part : parts) {
    part.backend->adamw_step(part.params, part.states[0], part.states[1], weights, part.grads, k, lr, beta1, beta2,
                             eps, weight_decay, step, maximize);
  }
}

// One vocabulary chunk of token_stats (fastunlearn/token_stats.py makes the state and walks the
// chunks): checked before the state or its version moves.
void check_token_stats(const Tensor& state, const Tensor& best, const Tensor& logits, int64_t start,
                       const Tensor& targets) {
  for (const Tensor* t : {&state, &best, &logits, &targets}) {
    TORCH_CHECK_TYPE(t->layout() == at::kStrided && !t->is_nested(), "fastunlearn: token_stats takes dense tensors, got ",
                     t->is_nested() ? "a nested tensor" : c10::str(t->layout()));
  }
  const at::ScalarType dtype = logits.scalar_type();
  TORCH_CHECK_VALUE(logits.dim() == 2, "fastunlearn: token_stats logits must be [rows, chunk], got ", logits.sizes());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "fastunlearn: token_stats logits must be float64/float32/bfloat16/float16, got ",
                   python_name(dtype));
  const int64_t n = logits.size(0);
  TORCH_CHECK_VALUE(state.dim() == 2 && state.size(0) == 5 && state.size(1) == n &&
                        state.scalar_type() == at::kDouble && state.is_contiguous(),
                    "fastunlearn: token_stats state must be a contiguous float64 [5, ", n, "] tensor");
  TORCH_CHECK_VALUE(best.dim() == 1 && best.size(0) == n && best.scalar_type() == at::kLong && best.is_contiguous(),
                    "fastunlearn: token_stats best must be a contiguous int64 [", n, "] tensor");
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == n && targets.scalar_type() == at::kLong,
                    "fastunlearn: token_stats targets must be an int64 [", n, "] tensor");
  TORCH_CHECK_VALUE(start >= 0, "fastunlearn: token_stats chunk start must be >= 0, got ", start);
  TORCH_CHECK_VALUE(logits.size(1) <= std::numeric_limits<int32_t>::max(), "fastunlearn: a token_stats chunk spans ",
                    logits.size(1), " columns; at most 2^31 - 1 (the vocabulary may be longer: pass a chunk_size)");
  for (const Tensor* t : {&state, &best, &targets}) {
    TORCH_CHECK_VALUE(t->device() == logits.device(), "fastunlearn: token_stats tensors must be on ",
                      logits.device(), ", got one on ", t->device());
  }
}

void token_stats_update_kernel(const Tensor& state, const Tensor& best, const Tensor& logits, int64_t start,
                               const Tensor& targets, c10::string_view backend) {
  check_token_stats(state, best, logits, start, targets);
  for (const Tensor* read : {&logits, &targets}) {
    at::assert_no_overlap(state, *read);
    at::assert_no_overlap(best, *read);
  }
  at::assert_no_overlap(state, best);
  const Backend& b = backend_for(backend, logits.device(), "token_stats");
  bump_versions({state, best});
  b.token_stats_update(state, best, logits, start, targets);
}

// ---- Meta kernels: the same structural checks, shapes and dtypes only --------------------------------

Tensor gram_meta(TensorList shards, int64_t k, std::optional<at::ScalarType> dtype, c10::string_view) {
  const Records records(shards);
  const int64_t n = check_vectors(records, k, vectors_name);
  return at::empty({k, k}, shards[0].options().dtype(dtype.value_or(engine::result_dtype_of(records, n))));
}

std::vector<Tensor> combine_meta(TensorList shards, const Tensor& weights, int64_t k, c10::string_view) {
  const int64_t n = check_vectors(Records(shards), k, vectors_name);
  std::vector<Tensor> outs;
  for (int64_t m = 0; m < weights.size(0); ++m) {
    for (int64_t i = 0; i < n; ++i) outs.push_back(at::empty_like(shards[i]));
  }
  return outs;
}

void combine_inplace_meta(TensorList out, const Tensor& weights, TensorList shards, int64_t k, c10::string_view) {
  const Update u = check_update(out, "out", Records(shards), k, vectors_name);
  check_weights(weights, k, u.in[0].device);
}

// The engine's outputs (gram, weights, stats) as shapes.
Tensor scalars_meta(const Update& u, int64_t count) {
  return at::empty({count}, u.in.tensors()[0].options().dtype(engine::accumulation_dtype_of(u.in, u.n)));
}

Tensor project_meta(TensorList g, TensorList r, c10::string_view mode, double, c10::string_view) {
  engine::projection(mode);
  return scalars_meta(check_update(g, "g", Records(g, r), 2, pair_names("g", "r")), 4);
}

Tensor project_normal_meta(TensorList g, TensorList directions, int64_t m, double, c10::string_view) {
  return scalars_meta(check_update(g, "g", Records(g, directions), m + 1, directions_name), m);
}

std::tuple<Tensor, Tensor> pcgrad_meta(TensorList out, TensorList shards, int64_t k, const std::optional<Tensor>&,
                                       c10::string_view reduction, double, c10::string_view,
                                       const std::optional<at::Generator>&) {
  engine::pcgrad(reduction);
  const Update u = check_update(out, "out", Records(shards), k, vectors_name);
  return {scalars_meta(u, k * k).view({k, k}), scalars_meta(u, k)};
}

std::tuple<Tensor, Tensor> aggregate_meta(TensorList out, TensorList shards, int64_t k, c10::string_view weighting,
                                          double, const std::optional<Tensor>&, c10::string_view) {
  engine::check_arity(engine::parse(weighting), k);
  const Update u = check_update(out, "out", Records(shards), k, vectors_name);
  return {scalars_meta(u, k * k).view({k, k}), scalars_meta(u, k)};
}

void token_stats_update_meta(const Tensor& state, const Tensor& best, const Tensor& logits, int64_t start,
                             const Tensor& targets, c10::string_view) {
  check_token_stats(state, best, logits, start, targets);
}

void sgd_step_meta(TensorList params, TensorList momentum_buffers, const Tensor& weights, TensorList grads, int64_t k,
                   double, double momentum, double, bool, double, bool, bool, c10::string_view) {
  const Records p(params);
  check_step_records(p, Records(grads), k, weights);
  check_state(p, momentum_buffers, "momentum buffer", /*optional=*/momentum == 0);
}

void adamw_step_meta(TensorList params, TensorList exp_avgs, TensorList exp_avg_sqs, const Tensor& weights,
                     TensorList grads, int64_t k, double, double, double, double, double, int64_t step, bool,
                     c10::string_view) {
  TORCH_CHECK_VALUE(step >= 1, "fastunlearn: AdamW step count must be >= 1, got ", step);
  const Records p(params);
  check_step_records(p, Records(grads), k, weights);
  check_state(p, exp_avgs, "exp_avg");
  check_state(p, exp_avg_sqs, "exp_avg_sq");
}

// ---- Autograd ---------------------------------------------------------------------------------------

const c10::TypedOperatorHandle<decltype(gram_kernel)>& gram_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastunlearn::gram", "").typed<decltype(gram_kernel)>();
  return op;
}

const c10::TypedOperatorHandle<decltype(combine_kernel)>& combine_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastunlearn::combine", "").typed<decltype(combine_kernel)>();
  return op;
}

// d<v_a, v_b>/dv_k contributes (G_bar + G_bar^T)[k, :] . v: the backward of a Gram pass is a combine pass.
class GramFunction : public torch::autograd::Function<GramFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, TensorList shards, int64_t k,
                        std::optional<at::ScalarType> dtype, const std::string& backend) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward(shards.vec());
    ctx->saved_data["k"] = k;
    ctx->saved_data["backend"] = backend;
    return gram_op().call(shards, k, dtype, backend);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const std::vector<Tensor> shards = ctx->get_saved_variables();
    const int64_t k = ctx->saved_data["k"].toInt();
    const Tensor weights = grads[0] + grads[0].mT();
    torch::autograd::variable_list out = combine_op().call(shards, weights, k, ctx->saved_data["backend"].toStringRef());
    out.resize(out.size() + 3);  // no gradient for k, dtype, backend
    return out;
  }
};

// Tensor subclasses (DTensor) run their own dispatch below this key: a list that mixes them with
// plain tensors would reach it half-understood, so it is refused here, before any kernel. The
// call's key set holds Python only if some tensor is a subclass: only then are the lists read.
void check_same_kind(const char* op, const c10::FunctionSchema& schema, size_t argument, TensorList list,
                     std::optional<bool>& subclass) {
  for (size_t i = 0; i < list.size(); ++i) {
    const bool is_subclass = list[i].key_set().has(c10::DispatchKey::Python);
    if (!subclass.has_value()) subclass = is_subclass;
    TORCH_CHECK_TYPE(is_subclass == *subclass, "fastunlearn.", op, ": ", schema.arguments()[argument].name(), "[", i,
                     "] is ",
                     *subclass ? "a plain tensor among tensor subclasses"
                               : "a tensor subclass (e.g. a DTensor) among plain tensors",
                     "; pass every shard as a DTensor or as a local tensor");
  }
}

template <typename T>
void check_same_kind(const char*, const c10::FunctionSchema&, size_t, const T&, std::optional<bool>&) {}

// The Autograd kernel of an op without a backward (the in-place ops, the optimizer steps, and
// combine, the Gram's backward itself): typed, so that a long list passes through unboxed.
template <const char* Name, typename Signature> struct Through;
template <const char* Name, typename R, typename... Args> struct Through<Name, R(Args...)> {
  static R call(c10::DispatchKeySet keys, Args... args) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<R(Args...)>();
    if (keys.has(c10::DispatchKey::Python)) check_kinds(op.schema(), std::index_sequence_for<Args...>{}, args...);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(keys & c10::after_ADInplaceOrView_keyset, args...);
  }

 private:
  template <size_t... I>
  static void check_kinds(const c10::FunctionSchema& schema, std::index_sequence<I...>, const Args&... args) {
    std::optional<bool> subclass;
    (check_same_kind(Name + 13, schema, I, args, subclass), ...);
  }
};

constexpr char kCombine[] = "fastunlearn::combine";
constexpr char kCombineInplace[] = "fastunlearn::combine_";
constexpr char kProject[] = "fastunlearn::project_";
constexpr char kProjectNormal[] = "fastunlearn::project_normal_";
constexpr char kPCGrad[] = "fastunlearn::pcgrad_";
constexpr char kAggregate[] = "fastunlearn::aggregate_";
constexpr char kSgdStep[] = "fastunlearn::sgd_step_";
constexpr char kAdamwStep[] = "fastunlearn::adamw_step_";
constexpr char kTokenStatsUpdate[] = "fastunlearn::token_stats_update_";

// Whether any tensor of the list requires grad: one read of each, prefetched ahead (a long list of
// separately allocated gradients would otherwise pay a cache miss per tensor, one after another).
bool any_requires_grad(TensorList tensors) {
  constexpr size_t kPrefetch = 12;
  bool any = false;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i + kPrefetch < tensors.size()) __builtin_prefetch(tensors[i + kPrefetch].unsafeGetTensorImpl());
    any = any || tensors[i].requires_grad();
  }
  return any;
}

Tensor gram_autograd(c10::DispatchKeySet keys, TensorList shards, int64_t k, std::optional<at::ScalarType> dtype,
                     c10::string_view backend) {
  // The call's key set holds Python only if some tensor is a subclass: then see that all are.
  const bool subclass = keys.has(c10::DispatchKey::Python) && shards[0].key_set().has(c10::DispatchKey::Python);
  for (size_t i = 1; keys.has(c10::DispatchKey::Python) && i < shards.size(); ++i) {
    TORCH_CHECK_TYPE(shards[i].key_set().has(c10::DispatchKey::Python) == subclass, "fastunlearn.gram: ",
                     vectors_name(i / (shards.size() / k)), " shard ", i % (shards.size() / k), " is ",
                     subclass ? "a plain tensor among tensor subclasses"
                              : "a tensor subclass (e.g. a DTensor) among plain tensors",
                     "; pass every shard as a DTensor or as a local tensor");
  }
  if (at::GradMode::is_enabled() && any_requires_grad(shards)) {
    return GramFunction::apply(shards, k, dtype, std::string(backend));
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return gram_op().call(shards, k, dtype, backend);
}

PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef FASTUNLEARN_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* cpu_isa_name(PyObject*, PyObject*) { return PyUnicode_FromString(isa_name(cpu_isa())); }

// The dtype policy (common/dtypes.h) for Python: fastunlearn._backend asks here, so that the rule
// is written once.
template <at::ScalarType (*Rule)(at::ScalarType)>
PyObject* dtype_rule(PyObject*, PyObject* dtype) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(THPDtype_Check(dtype), "expected a torch.dtype");
  const at::ScalarType scalar_type = reinterpret_cast<THPDtype*>(dtype)->scalar_type;
  TORCH_CHECK_TYPE(supported_dtype(scalar_type), "fastunlearn takes float64/float32/bfloat16/float16, got ",
                   python_name(scalar_type));
  PyObject* result = reinterpret_cast<PyObject*>(torch::getTHPDtype(Rule(scalar_type)));
  Py_INCREF(result);
  return result;
  END_HANDLE_TH_ERRORS
}

// layout_pairs(refs, tensors) -> (dense, pairs): for the Triton launchers, the layout policy of
// common/layouts.h -- whether each shard index's reference tensor is dense (else the index is
// computed in a contiguous stand-in), and whether tensors[s] pairs with index s % n's layout (else
// it is read through a copy, or written through a temporary).
PyObject* layout_pairs(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *refs_obj = nullptr, *tensors_obj = nullptr;
  if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &refs_obj, &PyList_Type, &tensors_obj)) return nullptr;
  const auto unpack = [](PyObject* list) {
    std::vector<Tensor> out;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
      PyObject* item = PyList_GET_ITEM(list, i);
      TORCH_CHECK_TYPE(THPVariable_Check(item), "layout_pairs takes lists of tensors");
      out.push_back(THPVariable_Unpack(item));
    }
    return out;
  };
  const std::vector<Tensor> refs = unpack(refs_obj), tensors = unpack(tensors_obj);
  TORCH_CHECK_VALUE(!refs.empty() && tensors.size() % refs.size() == 0, "layout_pairs: ", tensors.size(),
                    " tensors for ", refs.size(), " shard indices");
  THPObjectPtr dense(PyList_New(static_cast<Py_ssize_t>(refs.size())));
  THPObjectPtr pairs(PyList_New(static_cast<Py_ssize_t>(tensors.size())));
  if (!dense || !pairs) return nullptr;
  for (size_t i = 0; i < refs.size(); ++i) {
    PyList_SET_ITEM(dense.get(), i, PyBool_FromLong(refs[i].is_non_overlapping_and_dense()));
  }
  for (size_t s = 0; s < tensors.size(); ++s) {
    PyList_SET_ITEM(pairs.get(), s, PyBool_FromLong(pairs_with_layout(tensors[s], refs[s % refs.size()])));
  }
  return PyTuple_Pack(2, dense.get(), pairs.get());
  END_HANDLE_TH_ERRORS
}

PyMethodDef* module_methods() {
  static std::vector<PyMethodDef> all = [] {
    std::vector<PyMethodDef> methods = {
        {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were built."},
        {"cpu_isa", cpu_isa_name, METH_NOARGS, "The ISA level of the CPU kernels in use."},
        {"accumulation_dtype", dtype_rule<accumulation_dtype>, METH_O, "What reductions over a dtype accumulate in."},
        {"result_dtype", dtype_rule<result_dtype>, METH_O, "A dtype, but never below float32."},
        {"layout_pairs", layout_pairs, METH_VARARGS, "The shard layout policy, for the Triton launchers."},
        {"register_backend", register_backend, METH_VARARGS, "Registers a backend written in Python."},
        {"set_hooks", set_hooks, METH_VARARGS, "Registers the Python resolver of backend='auto' and the weightings."},
    };
    for (PyMethodDef* m = entry_methods(); m->ml_name != nullptr; ++m) methods.push_back(*m);
    methods.push_back({nullptr, nullptr, 0, nullptr});
    return methods;
  }();
  return all.data();
}

}  // namespace
}  // namespace fastunlearn

extern "C" {
// Importing fastunlearn._C runs the registrations below.
PyObject* PyInit__C(void) {
  // FASTUNLEARN_CPU_ISA is checked here, so a bad level fails the import rather than the first op.
  try {
    fastunlearn::cpu_isa();
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fastunlearn::module_methods()};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddIntConstant(module, "TABLE_CHUNK", fastunlearn::kTableChunk) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(fastunlearn, m) {
  m.def("gram(Tensor[] shards, int num_vectors, ScalarType? dtype=None, str backend=\"auto\") -> Tensor");
  m.def("combine(Tensor[] shards, Tensor weights, int num_vectors, str backend=\"auto\") -> Tensor[]");
  m.def("combine_(Tensor(a!)[] out, Tensor weights, Tensor[] shards, int num_vectors, str backend=\"auto\") -> ()");
  // `when` is the public `mode`: torch.library reserves the name `mode` for dispatch modes.
  m.def("project_(Tensor(a!)[] g, Tensor[] r, str when=\"always\", float eps=1e-20, str backend=\"auto\") -> Tensor");
  m.def(
      "project_normal_(Tensor(a!)[] g, Tensor[] directions, int num_directions, float eps=1e-20, "
      "str backend=\"auto\") -> Tensor");
  m.def(
      "pcgrad_(Tensor(a!)[] out, Tensor[] shards, int num_vectors, Tensor? order, str reduction=\"mean\", "
      "float eps=1e-20, str backend=\"auto\", Generator? generator=None) -> (Tensor, Tensor)");
  m.def("shard_table(Tensor[] tensors, int rows, int chunk) -> (Tensor, int, int)");
  m.def(
      "check_step(Tensor[] params, Tensor[] grads, int num_vectors, Tensor? weights, Tensor[] states, "
      "str[] state_names) -> ()");
  m.def(
      "aggregate_(Tensor(a!)[] out, Tensor[] shards, int num_vectors, str weighting, float eps=1e-20, "
      "Tensor? order=None, str backend=\"auto\") -> (Tensor, Tensor)");
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor(b!)[] momentum_buffers, Tensor weights, Tensor[] grads, "
      "int num_vectors, float lr, float momentum, float dampening, bool nesterov, float weight_decay, "
      "bool maximize, bool first_step, str backend=\"auto\") -> ()");
  m.def(
      "adamw_step_(Tensor(a!)[] params, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor weights, "
      "Tensor[] grads, int num_vectors, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "int step, bool maximize, str backend=\"auto\") -> ()");
  m.def(
      "token_stats_update_(Tensor(a!) state, Tensor(b!) best, Tensor logits, int start, Tensor targets, "
      "str backend=\"auto\") -> ()");
}

#define FASTUNLEARN_IMPLS(m, suffix)                                \
  m.impl("gram", &fastunlearn::gram_##suffix);                      \
  m.impl("combine", &fastunlearn::combine_##suffix);                \
  m.impl("combine_", &fastunlearn::combine_inplace_##suffix);       \
  m.impl("project_", &fastunlearn::project_##suffix);               \
  m.impl("project_normal_", &fastunlearn::project_normal_##suffix); \
  m.impl("pcgrad_", &fastunlearn::pcgrad_##suffix);                 \
  m.impl("aggregate_", &fastunlearn::aggregate_##suffix);           \
  m.impl("sgd_step_", &fastunlearn::sgd_step_##suffix);             \
  m.impl("adamw_step_", &fastunlearn::adamw_step_##suffix);         \
  m.impl("token_stats_update_", &fastunlearn::token_stats_update_##suffix);

// Sparse and nested tensors reach the dense kernels too, whose checks name them.
TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) { FASTUNLEARN_IMPLS(m, kernel) }
TORCH_LIBRARY_IMPL(fastunlearn, SparseCPU, m) { FASTUNLEARN_IMPLS(m, kernel) }
TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) { FASTUNLEARN_IMPLS(m, kernel) }
TORCH_LIBRARY_IMPL(fastunlearn, SparseCUDA, m) { FASTUNLEARN_IMPLS(m, kernel) }
TORCH_LIBRARY_IMPL(fastunlearn, NestedTensorCPU, m) { FASTUNLEARN_IMPLS(m, kernel) }
TORCH_LIBRARY_IMPL(fastunlearn, NestedTensorCUDA, m) { FASTUNLEARN_IMPLS(m, kernel) }
TORCH_LIBRARY_IMPL(fastunlearn, Meta, m) { FASTUNLEARN_IMPLS(m, meta) }
TORCH_LIBRARY_IMPL(fastunlearn, CompositeExplicitAutograd, m) {
  m.impl("check_step", &fastunlearn::check_step);
  m.impl("shard_table", &fastunlearn::shard_table_kernel);
}

#define FASTUNLEARN_THROUGH(m, name, constant, kernel) \
  m.impl(name, &fastunlearn::Through<fastunlearn::constant, decltype(fastunlearn::kernel)>::call)

TORCH_LIBRARY_IMPL(fastunlearn, Autograd, m) {
  m.impl("gram", &fastunlearn::gram_autograd);
  FASTUNLEARN_THROUGH(m, "combine", kCombine, combine_kernel);
  FASTUNLEARN_THROUGH(m, "combine_", kCombineInplace, combine_inplace_kernel);
  FASTUNLEARN_THROUGH(m, "project_", kProject, project_kernel);
  FASTUNLEARN_THROUGH(m, "project_normal_", kProjectNormal, project_normal_kernel);
  FASTUNLEARN_THROUGH(m, "pcgrad_", kPCGrad, pcgrad_kernel);
  FASTUNLEARN_THROUGH(m, "aggregate_", kAggregate, aggregate_kernel);
  FASTUNLEARN_THROUGH(m, "sgd_step_", kSgdStep, sgd_step_kernel);
  FASTUNLEARN_THROUGH(m, "adamw_step_", kAdamwStep, adamw_step_kernel);
  FASTUNLEARN_THROUGH(m, "token_stats_update_", kTokenStatsUpdate, token_stats_update_kernel);
}
