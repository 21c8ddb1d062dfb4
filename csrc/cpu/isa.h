// Which ISA clone of the CPU kernels runs. Every kernel is compiled once per level (see
// FU_ISA_CLONES in kernel_support.h) with the same lane structure, so every level gives the same
// bits; the level only changes the speed.
#pragma once

namespace fastunlearn {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The level in use: FASTUNLEARN_CPU_ISA (avx512, avx2 or baseline) if set, else the best this CPU
// supports. Read once, on first use; the extension's import calls it, so an unknown level or one
// this CPU lacks is an error there (c10::ValueError), never a silent fallback.
CpuIsa cpu_isa();

const char* isa_name(CpuIsa isa);

}  // namespace fastunlearn
