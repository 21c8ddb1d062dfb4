// Device-side helpers every kernel shares: element conversions and the chunk of a table row.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch.h"

namespace fastunlearn {
namespace cuda {

// Arithmetic type: double for double, float for everything narrower.
template <typename scalar_t> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ double to_float(double x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename scalar_t, typename comp_t> __device__ __forceinline__ scalar_t from_comp(comp_t x);
template <> __device__ __forceinline__ float from_comp<float, float>(float x) { return x; }
template <> __device__ __forceinline__ double from_comp<double, double>(double x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_comp<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_comp<__half, float>(float x) { return __float2half_rn(x); }

// The part [begin, end) of shard `shard` that chunk `c` covers.
struct Chunk {
  int64_t shard, begin, end;
};

__device__ __forceinline__ Chunk chunk_at(const ShardTable& t, int64_t c) {
  const int64_t shard = t.chunks[c];
  const int64_t begin = t.chunks[t.num_chunks + c];
  const int64_t size = t.sizes[shard];
  return {shard, begin, begin + kChunk < size ? begin + kChunk : size};
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t* row_ptr(const ShardTable& t, int64_t row, int64_t shard) {
  return reinterpret_cast<scalar_t*>(t.ptrs[row * t.num_shards + shard]);
}

// Sum over a warp in a fixed butterfly order: every lane ends with the same bits.
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Launches `kernel` on `grid` blocks of kThreads; returns the launch's error code.
template <typename Kernel, typename... Args>
int launch(Kernel kernel, int grid, size_t shared_bytes, void* stream, Args... args) {
  kernel<<<grid, kThreads, shared_bytes, static_cast<cudaStream_t>(stream)>>>(args...);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastunlearn
