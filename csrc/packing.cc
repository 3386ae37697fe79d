// Bin counts per window (see packing.h). Rooms are kept as a sorted vector: a window's bins
// are few (tens for 1024 samples), so a binary search and a short move beat a tree.
#include "packing.h"

#include <algorithm>
#include <functional>
#include <vector>

namespace resumable_loader {
namespace {

void cut(const int64_t* lengths, uint64_t count, int64_t capacity, bool split,
         std::vector<int64_t>& pieces) {
  pieces.clear();
  for (uint64_t i = 0; i < count; ++i) {
    int64_t length = lengths[i];
    if (!split || length <= capacity) {
      pieces.push_back(std::min(length, capacity));
      continue;
    }
    for (; length > 0; length -= capacity) pieces.push_back(std::min(length, capacity));
  }
}

int64_t best_fit(const std::vector<int64_t>& decreasing, int64_t capacity,
                 std::vector<int64_t>& rooms) {
  rooms.clear();  // ascending
  for (const int64_t size : decreasing) {
    auto at = std::lower_bound(rooms.begin(), rooms.end(), size);
    if (at == rooms.end()) {
      rooms.insert(std::upper_bound(rooms.begin(), rooms.end(), capacity - size), capacity - size);
      continue;
    }
    const int64_t room = *at - size;  // smaller: slide it left to its place
    auto to = std::upper_bound(rooms.begin(), at, room);
    std::move_backward(to, at, at + 1);
    *to = room;
  }
  return static_cast<int64_t>(rooms.size());
}

int64_t first_fit(const std::vector<int64_t>& decreasing, int64_t capacity,
                  std::vector<int64_t>& rooms) {
  rooms.clear();  // in order of opening
  for (const int64_t size : decreasing) {
    auto at = std::find_if(rooms.begin(), rooms.end(), [size](int64_t r) { return r >= size; });
    if (at == rooms.end()) {
      rooms.push_back(capacity - size);
    } else {
      *at -= size;
    }
  }
  return static_cast<int64_t>(rooms.size());
}

int64_t next_fit(const std::vector<int64_t>& pieces, int64_t capacity) {
  int64_t bins = 0, used = capacity + 1;
  for (const int64_t size : pieces) {
    if (used + size > capacity) ++bins, used = 0;
    used += size;
  }
  return bins;
}

int64_t padded_groups(const std::vector<int64_t>& decreasing, int64_t capacity) {
  int64_t groups = 0, count = 0, longest = 0;
  for (const int64_t size : decreasing) {
    if (groups == 0 || (count + 1) * longest > capacity) ++groups, count = 0, longest = size;
    ++count;
  }
  return groups;
}

// Longest first. Below 2**16 tokens a two-pass radix sort (of capacity - size, ascending):
// 5x faster than std::sort on a window of 1024, which the counts spend most of their time on.
void sort_decreasing(std::vector<int64_t>& pieces, int64_t capacity, std::vector<int64_t>& scratch) {
  if (capacity >= (int64_t{1} << 16)) {
    std::sort(pieces.begin(), pieces.end(), std::greater<int64_t>());
    return;
  }
  scratch.resize(pieces.size());
  for (int shift = 0; shift < 16; shift += 8) {
    uint32_t starts[257] = {};
    for (const int64_t size : pieces) ++starts[(((capacity - size) >> shift) & 0xff) + 1];
    for (int b = 0; b < 256; ++b) starts[b + 1] += starts[b];
    for (const int64_t size : pieces) scratch[starts[((capacity - size) >> shift) & 0xff]++] = size;
    pieces.swap(scratch);
  }
}

}  // namespace

void window_pack_counts(const int64_t* lengths, uint64_t n, uint64_t window, int64_t capacity,
                        PackStrategy strategy, bool split, int64_t* counts) {
  std::vector<int64_t> pieces, rooms, scratch;
  for (uint64_t first = 0, k = 0; first < n; first += window, ++k) {
    cut(lengths + first, std::min(window, n - first), capacity, split, pieces);
    if (strategy == PackStrategy::kNextFit) {
      counts[k] = next_fit(pieces, capacity);
      continue;
    }
    sort_decreasing(pieces, capacity, scratch);
    if (strategy == PackStrategy::kBestFit) {
      counts[k] = best_fit(pieces, capacity, rooms);
    } else if (strategy == PackStrategy::kFirstFit) {
      counts[k] = first_fit(pieces, capacity, rooms);
    } else {
      counts[k] = padded_groups(pieces, capacity);
    }
  }
}

}  // namespace resumable_loader
