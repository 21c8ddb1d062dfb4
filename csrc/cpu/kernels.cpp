#include "backend.h"
#include "cpu/combine.h"
#include "cpu/fused_step.h"
#include "cpu/gram.h"
#include "cpu/token_stats.h"

namespace fastunlearn {

NativeKernels cpu_kernels() {
  NativeKernels kernels{&gram_cpu, &combine_cpu, &sgd_step_cpu, &adamw_step_cpu};
  kernels.token_stats_update = &token_stats_update_cpu;
  return kernels;
}

}  // namespace fastunlearn
