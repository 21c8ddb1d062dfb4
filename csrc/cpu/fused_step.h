#pragma once

#include <ATen/ATen.h>

namespace fastunlearn {

// Optimizer updates whose gradient is d = sum_k weights[k] * grads[k * n + i], formed in registers
// and never written out. Same arithmetic, in the same order, as torch.optim.SGD / AdamW. Params and
// their state are dense, of one dtype, and share a layout (the op sends other steps to the torch
// backend: library.cpp, step_backend); gradients are paired by logical index.
void sgd_step_cpu(at::TensorList params, at::TensorList momentum_buffers, const at::Tensor& weights,
                  at::TensorList grads, int64_t num_vectors, double lr, double momentum,
                  double dampening, bool nesterov, double weight_decay, bool maximize,
                  bool first_step);

void adamw_step_cpu(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    const at::Tensor& weights, at::TensorList grads, int64_t num_vectors,
                    double lr, double beta1, double beta2, double eps, double weight_decay,
                    int64_t step, bool maximize);

}  // namespace fastunlearn
