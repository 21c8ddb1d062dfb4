// Device queries the binding needs without including CUDA headers itself.
#include <cuda_runtime.h>

#include "launch.h"

namespace fastunlearn {
namespace cuda {

int multiprocessor_count(int device) {
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 1;
  return count;
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace cuda
}  // namespace fastunlearn
