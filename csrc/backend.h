// The kernels of one backend: what the op kernels (library.cpp) call once validation has passed.
// Native backends (cpp, cuda) are C++ function pointers; the torch reference and the Triton
// kernels are Python functions registered at import (python_backend.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "common/records.h"
#include "common/weightings.h"

namespace fastunlearn {

class Backend {
 public:
  virtual ~Backend() = default;
  // K x K Gram matrix, in the accumulation dtype, of K vectors of shards of one dtype. `records`
  // (nullptr: not read) are the shards' metadata, already read by the checks.
  virtual at::Tensor gram(at::TensorList shards, int64_t k, const Records* records) const = 0;
  // outs[m * n + i] = sum_k weights[m, k] * shards[k * n + i] (weights M x K, shards of one dtype).
  virtual void combine(at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t k,
                       const Records* out_records, const Records* records) const = 0;
  virtual void sgd_step(at::TensorList params, at::TensorList momentum_buffers, const at::Tensor& weights,
                        at::TensorList grads, int64_t k, double lr, double momentum, double dampening, bool nesterov,
                        double weight_decay, bool maximize, bool first_step) const = 0;
  virtual void adamw_step(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                          const at::Tensor& weights, at::TensorList grads, int64_t k, double lr, double beta1,
                          double beta2, double eps, double weight_decay, int64_t step, bool maximize) const = 0;
  // The whole engine on the backend's own kernels (Gram pass, the scalar stage on the device, the
  // combine pass into `out`): the packed scalars [gram K*K | weights K | weightings::stats] in the
  // accumulation dtype; nullopt where the backend has no such path for this call, and the engine
  // runs the three stages itself.
  virtual std::optional<at::Tensor> aggregate(at::TensorList /*out*/, at::TensorList /*shards*/, int64_t /*k*/,
                                              weightings::Kind /*kind*/, double /*eps*/,
                                              const std::optional<at::Tensor>& /*order*/) const {
    return std::nullopt;
  }
  // One vocabulary chunk of token_stats' online softmax (fastunlearn/reference.py,
  // token_stats_update_): `state` [5, N] fp64 and `best` [N] int64 updated in place.
  virtual void token_stats_update(const at::Tensor& state, const at::Tensor& best, const at::Tensor& logits,
                                  int64_t start, const at::Tensor& targets) const = 0;
};

// Plain function pointers of a native backend.
struct NativeKernels {
  at::Tensor (*gram)(at::TensorList, int64_t, const Records*);
  void (*combine)(at::TensorList, const at::Tensor&, at::TensorList, int64_t, const Records*, const Records*);
  void (*sgd_step)(at::TensorList, at::TensorList, const at::Tensor&, at::TensorList, int64_t, double, double, double,
                   bool, double, bool, bool);
  void (*adamw_step)(at::TensorList, at::TensorList, at::TensorList, const at::Tensor&, at::TensorList, int64_t,
                     double, double, double, double, double, int64_t, bool);
  // Optional (nullptr: none): see Backend::aggregate.
  std::optional<at::Tensor> (*aggregate)(at::TensorList, at::TensorList, int64_t, weightings::Kind, double,
                                         const std::optional<at::Tensor>&) = nullptr;
  // Optional (nullptr: this backend has no token_stats kernel).
  void (*token_stats_update)(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                             const at::Tensor&) = nullptr;
};

NativeKernels cpu_kernels();   // csrc/cpu
NativeKernels cuda_kernels();  // csrc/cuda/binding.cpp (built with the CUDA kernels only)

// The backend `name` ("cpp", "cuda", or one registered from Python; "auto" asks the Python
// resolver) for tensors on `device`. `op` is "token_stats" for that op, which the cuda backend
// lacks (auto then picks another), and empty for every other op.
const Backend& backend_for(c10::string_view name, const at::Device& device, c10::string_view op = "");

// The K x K scalar stage of a built-in weighting on a device the C++ scalar code does not run on:
// the Python weighting (fastunlearn.weighting) registered at import.
at::Tensor python_weights(const std::string& weighting, const at::Tensor& gram, double eps,
                          const std::optional<at::Tensor>& order);

}  // namespace fastunlearn
