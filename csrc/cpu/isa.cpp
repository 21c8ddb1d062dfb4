#include "isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace fastunlearn {
namespace {

bool supported(CpuIsa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (isa) {
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && supported(CpuIsa::kAvx2);
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case CpuIsa::kBaseline: return true;
  }
  return false;
#else
  return isa == CpuIsa::kBaseline;  // elsewhere every clone is the compiler's default target
#endif
}

constexpr CpuIsa kLevels[] = {CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kBaseline};

CpuIsa best() {
  for (CpuIsa isa : kLevels) {
    if (supported(isa)) return isa;
  }
  return CpuIsa::kBaseline;
}

CpuIsa select() {
  const char* forced = std::getenv("FASTUNLEARN_CPU_ISA");
  if (forced == nullptr || *forced == '\0') return best();
  for (CpuIsa isa : kLevels) {
    if (std::strcmp(forced, isa_name(isa)) != 0) continue;
    TORCH_CHECK_VALUE(supported(isa), "FASTUNLEARN_CPU_ISA=", forced,
                      ": this CPU does not support that level (its best is ", isa_name(best()), ")");
    return isa;
  }
  TORCH_CHECK_VALUE(false, "FASTUNLEARN_CPU_ISA=", forced, " is not a level; expected avx512, avx2 or baseline");
}

}  // namespace

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kBaseline: return "baseline";
  }
  return "unknown";
}

CpuIsa cpu_isa() {
  static const CpuIsa level = select();
  return level;
}

}  // namespace fastunlearn
