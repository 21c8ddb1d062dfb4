#include "common/shard_table.h"

#include <algorithm>

namespace fastunlearn {

at::Tensor build_shard_table(const std::vector<const void*>& addresses, int64_t rows,
                             const std::vector<int64_t>& sizes, int64_t itemsize, int64_t chunk) {
  TORCH_CHECK_VALUE(chunk > 0, "fastunlearn: chunk must be positive");
  const auto n = static_cast<int64_t>(sizes.size());
  const auto at = [&](int64_t row, int64_t i) { return static_cast<const char*>(addresses[row * n + i]); };
  std::vector<int64_t> starts, merged_sizes;
  for (int64_t i = 0; i < n; ++i) {
    if (sizes[i] == 0) continue;
    bool follows = !starts.empty();
    for (int64_t row = 0; follows && row < rows; ++row) {
      follows = at(row, i) == at(row, starts.back()) + merged_sizes.back() * itemsize;
    }
    if (follows) {
      merged_sizes.back() += sizes[i];
    } else {
      starts.push_back(i);
      merged_sizes.push_back(sizes[i]);
    }
  }
  const auto shards = static_cast<int64_t>(starts.size());
  int64_t chunks = 0;
  for (int64_t size : merged_sizes) chunks += (size + chunk - 1) / chunk;
  at::Tensor table = at::empty({2 + rows * shards + shards + 2 * chunks}, at::kLong);
  int64_t* out = table.data_ptr<int64_t>();
  *out++ = shards;
  *out++ = chunks;
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t start : starts) *out++ = reinterpret_cast<int64_t>(at(row, start));
  }
  out = std::copy(merged_sizes.begin(), merged_sizes.end(), out);
  int64_t* begins = out + chunks;
  for (int64_t s = 0; s < shards; ++s) {
    for (int64_t begin = 0; begin < merged_sizes[s]; begin += chunk) {
      *out++ = s;
      *begins++ = begin;
    }
  }
  return table;
}

}  // namespace fastunlearn
