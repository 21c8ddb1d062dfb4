// The `cuda` backend: the CUDA kernels (launch.h) behind the op kernels of library.cpp, which have
// validated every call. Built only when torch has CUDA (setup.py). Uses device-generic c10 APIs for the stream
// and device guard, so it includes no CUDA header: it compiles (and is syntax-checked in the tests)
// against a CPU-only torch too.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <vector>

#include "common/layouts.h"
#include "cuda/launch.h"
#include "backend.h"
#include "common/dtypes.h"
#include "common/shard_table.h"

namespace fastunlearn {
namespace cuda {
namespace {

constexpr int kProgramsPerSm = 4;
// Tile side of Gram blocks when there are more than kMaxGramVectors vectors.
constexpr int kTile = 8;

Dtype dtype_of(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return Dtype::kF64;
    case at::kFloat: return Dtype::kF32;
    case at::kBFloat16: return Dtype::kBF16;
    case at::kHalf: return Dtype::kF16;
    default: TORCH_CHECK_TYPE(false, "fastunlearn: unsupported dtype ", type);
  }
}

at::ScalarType compute_type(at::ScalarType type) { return type == at::kDouble ? at::kDouble : at::kFloat; }

void* current_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "fastunlearn: the CUDA ", what, " kernel failed to launch: ", error_string(code));
}

// The table of one call on the device, and the tensor that owns its memory.
struct DeviceTable {
  at::Tensor packed;
  ShardTable view;
};

// The call's table (common/shard_table.h), uploaded: pageable memory is staged at once, so the
// copy never waits for the device.
DeviceTable make_table(const std::vector<std::vector<const void*>>& rows, const std::vector<int64_t>& sizes,
                       int64_t itemsize, const at::Device& device) {
  std::vector<const void*> addresses;
  for (const auto& row : rows) addresses.insert(addresses.end(), row.begin(), row.end());
  const at::Tensor host = build_shard_table(addresses, static_cast<int64_t>(rows.size()), sizes, itemsize);
  const int64_t shards = host[0].item<int64_t>(), chunks = host[1].item<int64_t>();  // host tensor: no sync
  at::Tensor packed = host.slice(0, 2).to(device, /*non_blocking=*/true);
  const int64_t* base = packed.const_data_ptr<int64_t>();
  const auto num_rows = static_cast<int64_t>(rows.size());
  return {packed, ShardTable{base, base + num_rows * shards, base + num_rows * shards + shards, shards, chunks}};
}

int grid_for(const ShardTable& table, const at::Device& device) {
  const int64_t programs = static_cast<int64_t>(kProgramsPerSm) * multiprocessor_count(device.index());
  return static_cast<int>(std::max<int64_t>(1, std::min(programs, table.num_chunks)));
}

std::vector<int64_t> sizes_of(at::TensorList shards, int64_t n) {
  std::vector<int64_t> sizes(n);
  for (int64_t i = 0; i < n; ++i) sizes[i] = shards[i].numel();
  return sizes;
}

std::vector<std::vector<const void*>> rows_of(const std::vector<const void*>& flat, int64_t n) {
  std::vector<std::vector<const void*>> rows;
  for (size_t r = 0; r < flat.size(); r += n) rows.emplace_back(flat.begin() + r, flat.begin() + r + n);
  return rows;
}

// K vectors of n shards on one CUDA device, of one dtype and paired shapes: the kernels index the
// tables with these assumptions, so the binding checks them even though the public ops did.
void check_lists(at::TensorList shards, int64_t k) {
  TORCH_CHECK_VALUE(k > 0 && !shards.empty() && shards.size() % k == 0, "fastunlearn: ", shards.size(),
                    " shards do not split into ", k, " vectors");
  TORCH_CHECK_VALUE(shards[0].is_cuda(), "fastunlearn: the cuda backend takes CUDA tensors, got ",
                    shards[0].device());
  const size_t n = shards.size() / k;
  for (size_t s = 0; s < shards.size(); ++s) {
    TORCH_CHECK_VALUE(shards[s].device() == shards[0].device() && shards[s].scalar_type() == shards[0].scalar_type() &&
                          shards[s].sizes() == shards[s % n].sizes(),
                      "fastunlearn: shard ", s, " differs in device, dtype or shape");
  }
}

at::Tensor gram_cuda(at::TensorList shards, int64_t num_vectors) {
  check_lists(shards, num_vectors);
  const int64_t k = num_vectors, n = static_cast<int64_t>(shards.size()) / k;
  const at::Device device = shards[0].device();
  const c10::DeviceGuard guard(device);
  const Layouts layouts = layouts_of(shards.slice(0, n));
  const InputPointers in = input_pointers(shards, n, layouts);
  const DeviceTable table = make_table(rows_of(in.ptrs, n), sizes_of(shards, n), shards[0].element_size(), device);
  const int grid = grid_for(table.view, device);
  const Dtype dtype = dtype_of(shards[0].scalar_type());
  void* stream = current_stream(device);
  if (k <= kMaxGramVectors) {  // partials, then one block adds them: two launches
    at::Tensor partials = at::empty({grid, kMaxGramVectors, kMaxGramVectors}, shards[0].options().dtype(at::kDouble));
    check_launch(launch_gram_partials(dtype, table.view, 0, 0, static_cast<int>(k), static_cast<int>(k), true,
                                      partials.data_ptr<double>(), grid, stream),
                 "gram");
    at::Tensor gram = at::empty({k, k}, shards[0].options().dtype(accumulation_dtype(shards[0].scalar_type())));
    check_launch(launch_gram_finish(dtype, partials.const_data_ptr<double>(), grid, static_cast<int>(k), -1, 0.0,
                                    nullptr, gram.data_ptr(), nullptr, stream),
                 "gram finish");
    return gram;
  }
  at::Tensor result = at::zeros({k, k}, shards[0].options().dtype(at::kDouble));
  const int tile = kTile;
  for (int64_t a = 0; a < k; a += tile) {
    for (int64_t b = a; b < k; b += tile) {
      const int rows = static_cast<int>(std::min<int64_t>(tile, k - a));
      const int cols = static_cast<int>(std::min<int64_t>(tile, k - b));
      at::Tensor partials = at::empty({grid, kMaxGramVectors, kMaxGramVectors}, result.options());
      check_launch(launch_gram_partials(dtype, table.view, static_cast<int>(a), static_cast<int>(b), rows, cols,
                                        a == b, partials.data_ptr<double>(), grid, stream),
                   "gram");
      result.slice(0, a, a + rows).slice(1, b, b + cols).copy_(partials.sum(0).slice(0, 0, rows).slice(1, 0, cols));
    }
  }
  const at::Tensor upper = result.triu();
  return (upper + upper.triu(1).mT()).to(accumulation_dtype(shards[0].scalar_type()));
}

// The engine in three launches: Gram partials over the inputs' rows of one table (inputs, then
// the output), the finish kernel (the Gram and the weighting's scalar stage, on the device), and the
// combine reading its weights from device memory. Up to kMaxGramVectors vectors.
std::optional<at::Tensor> aggregate_cuda(at::TensorList out, at::TensorList shards, int64_t num_vectors,
                                         weightings::Kind kind, double eps, const std::optional<at::Tensor>& order) {
  const int64_t k = num_vectors, n = static_cast<int64_t>(shards.size()) / k;
  if (k > kMaxGramVectors) return std::nullopt;
  check_lists(shards, k);
  const at::Device device = shards[0].device();
  const c10::DeviceGuard guard(device);
  const Layouts layouts = layouts_of(out);
  const InputPointers in = input_pointers(shards, n, layouts);
  OutputPointers written = output_pointers(out, n, layouts);
  std::vector<const void*> flat(in.ptrs.begin(), in.ptrs.end());
  flat.insert(flat.end(), written.ptrs.begin(), written.ptrs.end());
  const DeviceTable table = make_table(rows_of(flat, n), sizes_of(shards, n), shards[0].element_size(), device);
  const int grid = grid_for(table.view, device);
  const Dtype dtype = dtype_of(shards[0].scalar_type());
  void* stream = current_stream(device);
  const auto options = shards[0].options();
  at::Tensor partials = at::empty({grid, kMaxGramVectors, kMaxGramVectors}, options.dtype(at::kDouble));
  at::Tensor scalars = at::empty({k * k + k + weightings::stats_size(kind, k)},
                                 options.dtype(accumulation_dtype(shards[0].scalar_type())));
  at::Tensor combine_weights = at::empty({k}, options.dtype(compute_type(shards[0].scalar_type())));
  const at::Tensor order_on_device = order.has_value() ? order->contiguous() : at::Tensor();
  check_launch(launch_gram_partials(dtype, table.view, 0, 0, static_cast<int>(k), static_cast<int>(k), true,
                                    partials.data_ptr<double>(), grid, stream),
               "gram");
  check_launch(launch_gram_finish(dtype, partials.const_data_ptr<double>(), grid, static_cast<int>(k), kind, eps,
                                  order_on_device.defined() ? order_on_device.const_data_ptr<int64_t>() : nullptr,
                                  scalars.data_ptr(), combine_weights.data_ptr(), stream),
               "gram finish");
  check_launch(launch_combine(dtype, table.view, static_cast<int>(k), 1, combine_weights.const_data_ptr(), grid, stream),
               "combine");
  written.finish();
  return scalars;
}

void combine_cuda(at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t num_vectors) {
  check_lists(shards, num_vectors);
  const int64_t k = num_vectors, n = static_cast<int64_t>(shards.size()) / k;
  TORCH_CHECK_VALUE(outs.size() % n == 0, "fastunlearn: ", outs.size(), " output shards do not match ", n,
                    " input shards");
  const int64_t m = static_cast<int64_t>(outs.size()) / n;
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == m && weights.size(1) == k,
                    "fastunlearn: weights must have shape (", m, ", ", k, "), got ", weights.sizes());
  TORCH_CHECK_VALUE(weights.device() == shards[0].device(), "fastunlearn: weights are on ", weights.device());
  for (size_t s = 0; s < outs.size(); ++s) {
    TORCH_CHECK_VALUE(outs[s].device() == shards[0].device() && outs[s].scalar_type() == shards[0].scalar_type() &&
                          outs[s].sizes() == shards[s % n].sizes(),
                      "fastunlearn: output ", s, " differs in device, dtype or shape from its inputs");
  }
  if (m == 0) return;
  const at::Device device = shards[0].device();
  const c10::DeviceGuard guard(device);
  const Layouts layouts = layouts_of(outs.slice(0, n));
  const InputPointers in = input_pointers(shards, n, layouts);
  OutputPointers out = output_pointers(outs, n, layouts);
  const std::vector<void*>& out_ptrs = out.ptrs;
  // Outputs are written group by group; an output of a later group must not be an input.
  TORCH_CHECK_VALUE(m <= kMaxOuts || std::none_of(out_ptrs.begin(), out_ptrs.end(),
                                                   [&](const void* p) {
                                                     return std::find(in.ptrs.begin(), in.ptrs.end(), p) !=
                                                            in.ptrs.end();
                                                   }),
                    "fastunlearn: with more than ", kMaxOuts, " outputs, no output may be an input");
  const at::Tensor w = weights.to(compute_type(shards[0].scalar_type())).contiguous();
  const std::vector<int64_t> sizes = sizes_of(shards, n);
  void* stream = current_stream(device);
  for (int64_t j0 = 0; j0 < m; j0 += kMaxOuts) {
    const int64_t group = std::min<int64_t>(kMaxOuts, m - j0);
    std::vector<const void*> flat(in.ptrs.begin(), in.ptrs.end());
    flat.insert(flat.end(), out_ptrs.begin() + j0 * n, out_ptrs.begin() + (j0 + group) * n);
    const DeviceTable table = make_table(rows_of(flat, n), sizes, shards[0].element_size(), device);
    const at::Tensor w_group = w.slice(0, j0, j0 + group).contiguous();
    check_launch(launch_combine(dtype_of(shards[0].scalar_type()), table.view, static_cast<int>(k),
                                static_cast<int>(group), w_group.const_data_ptr(), grid_for(table.view, device),
                                stream),
                 "combine");
  }
  out.finish();
}

// Row 0 the parameters, then the state lists, then the K gradients (in the parameters' layout).
DeviceTable step_table(at::TensorList params, const std::vector<at::TensorList>& state, at::TensorList grads,
                       InputPointers& grad_copies) {
  const int64_t n = static_cast<int64_t>(params.size());
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(params[i].is_non_overlapping_and_dense(), "fastunlearn: parameter ", i, " is not dense");
    TORCH_CHECK_TYPE(params[i].scalar_type() == params[0].scalar_type() && params[i].device() == params[0].device(),
                     "fastunlearn: parameter ", i, " differs in dtype or device from parameter 0");
  }
  for (const auto& list : state) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(list.size()) == n, "fastunlearn: one state tensor per parameter");
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(same_dense_layout(list[i], params[i]) && list[i].scalar_type() == params[i].scalar_type(),
                        "fastunlearn: optimizer state must be dense and in its parameter's layout and dtype");
    }
  }
  TORCH_CHECK_VALUE(!grads.empty() && grads.size() % n == 0, "fastunlearn: gradients must be K vectors of ", n,
                    " shards");
  for (size_t s = 0; s < grads.size(); ++s) {
    TORCH_CHECK_VALUE(grads[s].sizes() == params[s % n].sizes() && grads[s].scalar_type() == params[0].scalar_type() &&
                          grads[s].device() == params[0].device(),
                      "fastunlearn: gradient shard ", s, " does not match its parameter");
  }
  Layouts layouts = layouts_of(params);
  grad_copies = input_pointers(grads, n, layouts);
  std::vector<const void*> flat;
  for (const auto& p : params) flat.push_back(p.data_ptr());
  for (const auto& list : state) {
    for (const auto& t : list) flat.push_back(t.data_ptr());
  }
  flat.insert(flat.end(), grad_copies.ptrs.begin(), grad_copies.ptrs.end());
  return make_table(rows_of(flat, n), sizes_of(params, n), params[0].element_size(), params[0].device());
}

at::Tensor step_weights(const at::Tensor& weights, int64_t num_vectors, const at::Tensor& param) {
  TORCH_CHECK_VALUE(weights.numel() == num_vectors && weights.device() == param.device(), "fastunlearn: weights must be ",
                    num_vectors, " values on ", param.device());
  return weights.reshape({-1}).to(compute_type(param.scalar_type())).contiguous();
}

at::Tensor hyper_tensor(const std::vector<double>& values, const at::Tensor& like) {
  at::Tensor host = at::tensor(values, at::kDouble).to(compute_type(like.scalar_type()));
  return host.to(like.device(), /*non_blocking=*/true);
}

void sgd_step_cuda(at::TensorList params, at::TensorList momentum_buffers, const at::Tensor& weights,
                   at::TensorList grads, int64_t num_vectors, double lr, double momentum, double dampening,
                   bool nesterov, double weight_decay, bool maximize, bool first_step) {
  if (params.empty()) return;
  const at::Device device = params[0].device();
  const c10::DeviceGuard guard(device);
  const bool has_momentum = momentum != 0.0;
  InputPointers grad_copies;
  const DeviceTable table = step_table(params, {has_momentum ? momentum_buffers : params}, grads, grad_copies);
  const at::Tensor w = step_weights(weights, num_vectors, params[0]);
  const at::Tensor hyper = hyper_tensor({lr, momentum, 1.0 - dampening, weight_decay}, params[0]);
  const SgdFlags flags{has_momentum, first_step, nesterov, maximize};
  check_launch(launch_sgd_step(dtype_of(params[0].scalar_type()), table.view, static_cast<int>(num_vectors),
                               w.const_data_ptr(), hyper.const_data_ptr(), flags, grid_for(table.view, device),
                               current_stream(device)),
               "SGD");
}

void adamw_step_cuda(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     const at::Tensor& weights, at::TensorList grads, int64_t num_vectors, double lr, double beta1,
                     double beta2, double eps, double weight_decay, int64_t step, bool maximize) {
  if (params.empty()) return;
  const at::Device device = params[0].device();
  const c10::DeviceGuard guard(device);
  InputPointers grad_copies;
  const DeviceTable table = step_table(params, {exp_avgs, exp_avg_sqs}, grads, grad_copies);
  const at::Tensor w = step_weights(weights, num_vectors, params[0]);
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step)));
  const at::Tensor hyper = hyper_tensor({1.0 - beta1, beta2, 1.0 - beta2, eps, 1.0 - lr * weight_decay,
                                         lr / bias_correction1, bias_correction2_sqrt},
                                        params[0]);
  check_launch(launch_adamw_step(dtype_of(params[0].scalar_type()), table.view, static_cast<int>(num_vectors),
                                 w.const_data_ptr(), hyper.const_data_ptr(), maximize, grid_for(table.view, device),
                                 current_stream(device)),
               "AdamW");
}

}  // namespace
}  // namespace cuda

NativeKernels cuda_kernels() {
  // The CUDA binding builds its tables from the tensors; the records the checks read are not needed.
  const auto gram = [](at::TensorList shards, int64_t k, const Records*) { return cuda::gram_cuda(shards, k); };
  const auto combine = [](at::TensorList outs, const at::Tensor& weights, at::TensorList shards, int64_t k,
                          const Records*, const Records*) { cuda::combine_cuda(outs, weights, shards, k); };
  return {gram, combine, &cuda::sgd_step_cuda, &cuda::adamw_step_cuda, &cuda::aggregate_cuda};
}

}  // namespace fastunlearn
