// The checks of every op, written once and run before anything is written or any version counter
// moves. They read the tensors' records (records.h: one visit per tensor per call) and touch a
// tensor itself only to word an error. Errors name the argument and the shard (the caller's names:
// "g", "r", "directions[1]", "vectors[0]", "out") and raise TypeError (wrong kind of thing) or
// ValueError (wrong value).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>

#include "common/records.h"

namespace fastunlearn {

// How a call's errors name vector k of its inputs.
using VectorNames = std::function<std::string(int64_t)>;
std::string indexed(const char* list, int64_t k);  // "vectors[3]"

// K vectors of n shards, passed flat and vector-major (vector k, shard i at k * n + i): dense
// floating-point tensors on one device, with one shape and one dtype at each shard index (shards of
// one vector may differ in dtype). Returns n.
int64_t check_vectors(const Records& shards, int64_t k, const VectorNames& name);

// Outputs pairing with the first n records of `shards` shard by shard: same device, dtype and shape.
void check_outputs_match(const Records& outs, const Records& shards, const char* what, const std::string& first_name);

// Tensors an in-place op writes: no autograd history that the write would corrupt (with grad mode
// on), and inference tensors only inside inference mode (torch's own rule for in-place updates).
void check_writable(const Records& outs, const char* what);

// In-place ops have no backward: with grad mode on, an input that requires grad would lose its
// graph without a word, so it is an error. Checks records [begin, end) (n shards per vector).
void check_not_differentiated(const Records& shards, size_t begin, int64_t n, const VectorNames& name);

// A (K,) floating-point weight tensor on `device`, not requiring grad under grad mode.
void check_weights(const at::Tensor& weights, int64_t k, const at::Device& device);

// No output writes an element twice or shares one with another output or with an input other
// than itself at its own shard index. Tensors without memory (meta, fake) are not compared.
void check_overlaps(const Records& outs, const Records& inputs, int64_t n, const char* what,
                    const VectorNames& input_name);

// Python's spelling of a dtype ("torch.float32"), for messages that match the Python API.
std::string python_name(at::ScalarType dtype);

}  // namespace fastunlearn
