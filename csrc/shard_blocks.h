// The shard-local order of one epoch as a pure function of position (over sample ids, never
// over sample data): the id at any position is computed from the epoch's settings alone, at
// the cost of one block, so a resume costs the same at position 10^9 as at 0.
//
// Contract: for fixed (shard sizes, seed, epoch, window k, block size B) the order is a fixed
// permutation of all n sample ids, whatever reads it and however it is split:
//
//   1. Shard order: a Feistel permutation of the shard indices keyed by (seed, epoch) with the
//      SHARD_ORDER purpose. The shards, taken in that order, each front to back, make one
//      sequence V of the n ids.
//   2. Lanes: V is cut into k consecutive lanes (with n = k*L + r, lane j starts at
//      j*L + min(j, r) and holds L + [j < r] ids) read side by side: interleaved position q
//      holds lane q mod k at offset q div k for q < k*L, and lane q - k*L at offset L after
//      that. So k shards are open at a time, each read front to back, as k readers would.
//   3. Blocks: positions [b*B, b*B + m) (m = B, or what is left at the end) hold the same
//      interleaved ids, shuffled by Fisher-Yates: for i = m-1 down to 1, swap slots i and
//      j = (w * (i + 1)) >> 32, w being word (b*B + i) mod 4 of Philox4x32-10 at counter
//      ((b*B + i) / 4 lo, hi, epoch, SHUFFLE_BUFFER) under the seed (Lemire's multiply-shift
//      without its rejection step: the bias is below B / 2^32).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "permutation.h"

namespace resumable_loader {

class ShardBlockOrder {
  class Lanes;  // the interleaved ids from a position on (step 2)

 public:
  // block must be in [1, 2^32); window >= 1.
  ShardBlockOrder(const int64_t* shard_sizes, uint64_t num_shards, uint64_t seed, uint32_t epoch,
                  uint64_t window, uint64_t block, const uint32_t* shard_round_keys);

  // Reads the order front to back from a position, computing each block once (a fill() per
  // chunk computes again the blocks that chunk boundaries cut). Keeps `order` referenced.
  class Reader {
   public:
    Reader(const ShardBlockOrder& order, uint64_t position);
    ~Reader();
    uint64_t remaining() const { return order_.total_ - position_; }
    uint64_t read(int64_t* out, uint64_t count);  // the next ids; returns how many

   private:
    const ShardBlockOrder& order_;
    std::unique_ptr<Lanes> lanes_;  // at the first position after block_
    std::vector<int64_t> block_;    // the block holding position_, shuffled
    uint64_t block_first_;          // the position of block_[0]
    uint64_t position_;
  };

  uint64_t size() const { return total_; }
  // out[i] = the id at position start + i, for i < count (start + count <= size()).
  void fill(uint64_t start, uint64_t count, int64_t* out) const;

 private:

  void shuffle_block(uint64_t first, uint64_t length, int64_t* ids) const;

  std::vector<int64_t> first_id_;  // per slot of the shard order: the shard's first global id
  std::vector<int64_t> starts_;    // per slot: its first offset in V; n at the end
  uint64_t seed_;
  uint32_t epoch_;
  uint64_t window_;
  uint64_t block_;
  uint64_t total_ = 0;
};

}  // namespace resumable_loader
