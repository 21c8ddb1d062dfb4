#include "backend.h"
#include "cpu/combine.h"
#include "cpu/fused_step.h"
#include "cpu/gram.h"

namespace fastunlearn {

NativeKernels cpu_kernels() { return {&gram_cpu, &combine_cpu, &sgd_step_cpu, &adamw_step_cpu}; }

}  // namespace fastunlearn
