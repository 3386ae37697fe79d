// Bin counts per window (see packing.h). The lengths are gathered with prefetching (the ids
// of a shuffled epoch are random, so each read would otherwise wait for memory). Best fit
// keeps a two-level bitset of the free rooms in use (and a count per room), so the fullest bin
// a piece fits is found in a few words; first fit scans the rooms in order of opening.
#include "packing.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

namespace resumable_loader {
namespace {

constexpr uint64_t kPrefetch = 16;  // reads in flight while gathering

void cut(const int32_t* lengths, const int64_t* ids, uint64_t count, int64_t capacity,
         bool split, std::vector<int64_t>& pieces) {
  pieces.clear();
  for (uint64_t i = 0; i < count; ++i) {
    if (i + kPrefetch < count) __builtin_prefetch(lengths + ids[i + kPrefetch]);
    int64_t length = lengths[ids[i]];
    if (!split || length <= capacity) {
      pieces.push_back(std::min(length, capacity));
      continue;
    }
    for (; length > 0; length -= capacity) pieces.push_back(std::min(length, capacity));
  }
}

// Longest first: a two-pass radix sort (of capacity - size, ascending) below 2**16 tokens,
// 5x faster than std::sort on a window of 1024.
void sort_decreasing(std::vector<int64_t>& pieces, int64_t capacity,
                     std::vector<int64_t>& scratch) {
  if (capacity >= (int64_t{1} << 16)) {
    std::sort(pieces.begin(), pieces.end(), [](int64_t a, int64_t b) { return a > b; });
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

// The free rooms of a window's bins: how many bins have each room, a bit per room in use and
// a summary bit per non-empty word, so the smallest room >= a size is found in a few words.
class Rooms {
 public:
  explicit Rooms(int64_t capacity)
      : counts_(static_cast<size_t>(capacity) + 1),
        bits_(static_cast<size_t>(capacity) / 64 + 1),
        summary_(bits_.size() / 64 + 1) {}

  void add(int64_t room) {
    if (counts_[room]++ != 0) return;
    const size_t word = static_cast<size_t>(room) >> 6;
    if (bits_[word] == 0) summary_[word >> 6] |= uint64_t{1} << (word & 63);
    bits_[word] |= uint64_t{1} << (room & 63);
  }

  void remove(int64_t room) {
    if (--counts_[room] != 0) return;
    const size_t word = static_cast<size_t>(room) >> 6;
    bits_[word] &= ~(uint64_t{1} << (room & 63));
    if (bits_[word] == 0) summary_[word >> 6] &= ~(uint64_t{1} << (word & 63));
  }

  // The smallest room >= size in use, or -1.
  int64_t at_least(int64_t size) const {
    const size_t word = static_cast<size_t>(size) >> 6;
    const uint64_t here = bits_[word] & (~uint64_t{0} << (size & 63));
    if (here != 0) return static_cast<int64_t>(word * 64 + __builtin_ctzll(here));
    const size_t next = word + 1;  // the first non-empty word after it, from the summary
    size_t group = next >> 6;
    if (group >= summary_.size()) return -1;
    uint64_t words = (next & 63) == 0 ? summary_[group] : summary_[group] & (~uint64_t{0} << (next & 63));
    while (words == 0) {
      if (++group == summary_.size()) return -1;
      words = summary_[group];
    }
    const size_t found = group * 64 + __builtin_ctzll(words);
    return static_cast<int64_t>(found * 64 + __builtin_ctzll(bits_[found]));
  }

  // Empty again (only the words in use are visited).
  void clear() {
    for (size_t group = 0; group < summary_.size(); ++group) {
      for (uint64_t words = summary_[group]; words != 0; words &= words - 1) {
        const size_t word = group * 64 + __builtin_ctzll(words);
        for (uint64_t bits = bits_[word]; bits != 0; bits &= bits - 1) {
          counts_[word * 64 + __builtin_ctzll(bits)] = 0;
        }
        bits_[word] = 0;
      }
      summary_[group] = 0;
    }
  }

 private:
  std::vector<uint32_t> counts_;
  std::vector<uint64_t> bits_;
  std::vector<uint64_t> summary_;
};

int64_t best_fit(const std::vector<int64_t>& decreasing, int64_t capacity, Rooms& rooms) {
  int64_t bins = 0;
  for (const int64_t size : decreasing) {
    const int64_t room = rooms.at_least(size);
    if (room < 0) {
      ++bins;
      rooms.add(capacity - size);
    } else {
      rooms.remove(room);
      rooms.add(room - size);
    }
  }
  rooms.clear();
  return bins;
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

// Piece indices longest first, equal sizes in order of position (a stable LSD radix sort of
// capacity - size below 2**16 tokens, else a stable sort).
std::vector<int64_t> decreasing_order(const int64_t* sizes, uint64_t n, int64_t capacity) {
  std::vector<int64_t> order(n), scratch(n);
  for (uint64_t i = 0; i < n; ++i) order[i] = static_cast<int64_t>(i);
  if (capacity >= (int64_t{1} << 16)) {
    std::stable_sort(order.begin(), order.end(),
                     [sizes](int64_t a, int64_t b) { return sizes[a] > sizes[b]; });
    return order;
  }
  for (int shift = 0; shift < 16; shift += 8) {
    uint32_t starts[257] = {};
    for (const int64_t i : order) ++starts[(((capacity - sizes[i]) >> shift) & 0xff) + 1];
    for (int b = 0; b < 256; ++b) starts[b + 1] += starts[b];
    for (const int64_t i : order) scratch[starts[((capacity - sizes[i]) >> shift) & 0xff]++] = i;
    order.swap(scratch);
  }
  return order;
}

}  // namespace

void window_pack_bins(const int64_t* sizes, uint64_t n, int64_t capacity, PackStrategy strategy,
                      int64_t* bins) {
  if (strategy == PackStrategy::kNextFit) {
    int64_t bin = -1, used = capacity + 1;
    for (uint64_t i = 0; i < n; ++i) {
      if (used + sizes[i] > capacity) ++bin, used = 0;
      used += sizes[i];
      bins[i] = bin;
    }
    return;
  }
  const std::vector<int64_t> order = decreasing_order(sizes, n, capacity);
  int64_t opened = 0;
  if (strategy == PackStrategy::kBestFit) {
    std::set<std::pair<int64_t, int64_t>> rooms;  // (room, bin): the fullest fit, first opened
    for (const int64_t i : order) {
      auto at = rooms.lower_bound({sizes[i], -1});
      int64_t room = capacity, bin = opened;
      if (at == rooms.end()) {
        ++opened;
      } else {
        room = at->first, bin = at->second;
        rooms.erase(at);
      }
      rooms.insert({room - sizes[i], bin});
      bins[i] = bin;
    }
  } else if (strategy == PackStrategy::kFirstFit) {
    std::vector<int64_t> rooms;  // by bin, in order of opening
    for (const int64_t i : order) {
      auto at = std::find_if(rooms.begin(), rooms.end(), [&](int64_t r) { return r >= sizes[i]; });
      if (at == rooms.end()) at = rooms.insert(rooms.end(), capacity);
      *at -= sizes[i];
      bins[i] = at - rooms.begin();
    }
  } else {
    int64_t bin = -1, count = 0, longest = 0;
    for (const int64_t i : order) {
      if (bin < 0 || (count + 1) * longest > capacity) ++bin, count = 0, longest = sizes[i];
      ++count;
      bins[i] = bin;
    }
  }
}

namespace {

// Pieces whose tokens are fetched ahead of the one being written: a batch's pieces lie at
// random places of the token file, each a few cache lines on one or two pages, so the hardware
// prefetcher (which stops at page ends) does not find them, and each would wait for memory and
// a page walk (measured: ~30 us of ~60 for 8 packs of 4096 tokens, without).
constexpr uint64_t kPiecesAhead = 4;
constexpr int64_t kLine = 64;

template <typename Token>
void prefetch_span(const Token* from, int64_t size) {
  const char* begin = reinterpret_cast<const char*>(from);
  const char* end = reinterpret_cast<const char*>(from + size);
  for (const char* line = begin; line < end; line += kLine) __builtin_prefetch(line);
}

// to[j] = from[j] for j < size, widened to int64 (a loop the compiler vectorizes).
template <typename Token>
void widen(const Token* __restrict from, int64_t size, int64_t* __restrict to) {
  for (int64_t j = 0; j < size; ++j) to[j] = static_cast<int64_t>(from[j]);
}

// The layout of packing.h: rows first, written a piece at a time (tokens, then positions), the
// labels copied from the whole input_ids row at once and masked at each piece's first token.
// span(k) is where piece k's tokens begin.
template <typename Token, typename Span>
int64_t write_packs(Span span, const PackPieces& pieces, int64_t total, int64_t* out) {
  int64_t* const input_ids = out;
  int64_t* const labels = out + total;
  int64_t* const position_ids = out + 2 * total;
  int64_t* const provenance = out + 3 * total;
  int64_t* const pack_bounds = provenance + 3 * pieces.count;
  int32_t* const cu = reinterpret_cast<int32_t*>(pack_bounds + pieces.packs + 1);
  int64_t longest = 0, end = 0;
  cu[0] = 0;
  for (uint64_t k = 0; k < pieces.count; ++k) {
    if (k + kPiecesAhead < pieces.count) {
      prefetch_span(span(k + kPiecesAhead), pieces.sizes[k + kPiecesAhead]);
    }
    const int64_t size = pieces.sizes[k];
    widen(span(k), size, input_ids + end);
    int64_t* const counted = position_ids + end;
    for (int64_t j = 0; j < size; ++j) counted[j] = j;
    end += size;
    longest = std::max(longest, size);
    cu[k + 1] = static_cast<int32_t>(end);
  }
  std::memcpy(labels, input_ids, static_cast<size_t>(total) * sizeof(int64_t));
  for (uint64_t k = 0; k < pieces.count; ++k) {
    if (cu[k + 1] > cu[k]) labels[cu[k]] = -100;
  }
  std::copy(pieces.ids, pieces.ids + pieces.count, provenance);
  std::copy(pieces.positions, pieces.positions + pieces.count, provenance + pieces.count);
  std::copy(pieces.offsets, pieces.offsets + pieces.count, provenance + 2 * pieces.count);
  for (uint64_t p = 0; p <= pieces.packs; ++p) pack_bounds[p] = pieces.bounds[p] - pieces.bounds[0];
  return longest;
}

}  // namespace

int64_t window_pack_plan(const int64_t* sizes, uint64_t n, int64_t capacity,
                         PackStrategy strategy, int64_t* order, int64_t* bounds) {
  std::vector<int64_t> bins(n);
  window_pack_bins(sizes, n, capacity, strategy, bins.data());
  // bins are numbered in order of opening; rank them by their first piece
  std::vector<int64_t> rank(n, -1);
  int64_t count = 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (rank[bins[i]] < 0) rank[bins[i]] = count++;
  }
  std::fill(bounds, bounds + count + 1, 0);
  for (uint64_t i = 0; i < n; ++i) ++bounds[rank[bins[i]] + 1];
  for (int64_t b = 0; b < count; ++b) bounds[b + 1] += bounds[b];
  std::vector<int64_t> place(bounds, bounds + count);
  for (uint64_t i = 0; i < n; ++i) order[place[rank[bins[i]]]++] = static_cast<int64_t>(i);
  return count;
}

template <typename Token>
int64_t fill_pack_batch(const Token* tokens, const int64_t* first, const PackPieces& pieces,
                        int64_t total, int64_t* out) {
  return write_packs<Token>([=](uint64_t k) { return tokens + first[k]; }, pieces, total, out);
}

template <typename Token>
int64_t fill_document_packs(const TokenArrays<Token>& tokens, const int64_t* starts,
                            const PackPieces& pieces, int64_t total, int64_t* out) {
  const int64_t* ids = pieces.ids;
  const int64_t* offsets = pieces.offsets;
  const int64_t* arrays = tokens.starts;
  const uint64_t count = tokens.count;
  auto span = [=](uint64_t k) {  // in the last array starting at or before the piece
    const int64_t at = starts[ids[k]] + offsets[k];
    const uint64_t s = std::upper_bound(arrays + 1, arrays + count, at) - (arrays + 1);
    return tokens.data[s] + (at - arrays[s]);
  };
  return write_packs<Token>(span, pieces, total, out);
}

#define RL_FILL_PACK_BATCH(Token)                                                              \
  template int64_t fill_pack_batch(const Token*, const int64_t*, const PackPieces&, int64_t,  \
                                   int64_t*);                                                 \
  template int64_t fill_document_packs(const TokenArrays<Token>&, const int64_t*,              \
                                       const PackPieces&, int64_t, int64_t*);
RL_FILL_PACK_BATCH(uint8_t)
RL_FILL_PACK_BATCH(int8_t)
RL_FILL_PACK_BATCH(uint16_t)
RL_FILL_PACK_BATCH(int16_t)
RL_FILL_PACK_BATCH(uint32_t)
RL_FILL_PACK_BATCH(int32_t)
RL_FILL_PACK_BATCH(uint64_t)
RL_FILL_PACK_BATCH(int64_t)
#undef RL_FILL_PACK_BATCH

void window_pack_counts(const int32_t* lengths, const int64_t* ids, uint64_t n, uint64_t window,
                        int64_t capacity, PackStrategy strategy, bool split, int64_t* counts) {
  std::vector<int64_t> pieces, scratch, open;
  Rooms rooms(strategy == PackStrategy::kBestFit ? capacity : 0);
  for (uint64_t first = 0, k = 0; first < n; first += window, ++k) {
    cut(lengths, ids + first, std::min(window, n - first), capacity, split, pieces);
    if (strategy == PackStrategy::kNextFit) {
      counts[k] = next_fit(pieces, capacity);
      continue;
    }
    sort_decreasing(pieces, capacity, scratch);
    if (strategy == PackStrategy::kBestFit) {
      counts[k] = best_fit(pieces, capacity, rooms);
    } else if (strategy == PackStrategy::kFirstFit) {
      counts[k] = first_fit(pieces, capacity, open);
    } else {
      counts[k] = padded_groups(pieces, capacity);
    }
  }
}

}  // namespace resumable_loader
