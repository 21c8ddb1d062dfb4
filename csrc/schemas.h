// Schemas of the kernel ops, shared by every device namespace (fastunlearn_cpu, fastunlearn_cuda).
#pragma once

namespace fastunlearn {
namespace schema {

constexpr const char* kGram = "gram(Tensor[] shards, int num_vectors) -> Tensor";
constexpr const char* kCombine = "combine_(Tensor(a!)[] outs, Tensor weights, Tensor[] shards, int num_vectors) -> ()";
constexpr const char* kSgdStep =
    "sgd_step_(Tensor(a!)[] params, Tensor(b!)[] momentum_buffers, Tensor weights, Tensor[] grads, "
    "int num_vectors, float lr, float momentum, float dampening, bool nesterov, float weight_decay, "
    "bool maximize, bool first_step) -> ()";
constexpr const char* kAdamwStep =
    "adamw_step_(Tensor(a!)[] params, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor weights, "
    "Tensor[] grads, int num_vectors, float lr, float beta1, float beta2, float eps, float weight_decay, "
    "int step, bool maximize) -> ()";

}  // namespace schema
}  // namespace fastunlearn
