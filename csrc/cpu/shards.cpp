#include "shards.h"

namespace fastunlearn {

ChunkPlan plan_chunks(at::TensorList first_vector) {
  ChunkPlan plan;
  plan.offsets.reserve(first_vector.size() + 1);
  plan.offsets.push_back(0);
  for (const auto& t : first_vector) {
    plan.offsets.push_back(plan.offsets.back() + t.numel());
  }
  return plan;
}

}  // namespace fastunlearn
