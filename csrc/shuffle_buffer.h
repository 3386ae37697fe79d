// The shard-local order of one epoch, replayed over sample ids (never over sample data).
//
// Contract: for fixed (shard sizes, seed, epoch, window k, buffer size B) the stream is a fixed
// permutation of all sample ids, whatever reads it and however it is split; position p of the
// stream is reached by replaying the id bookkeeping from the epoch's start (skip(p)), which is
// what makes a resume exact without storing the buffer in the cursor.
//
//   1. Shard order: a Feistel permutation of the shard indices keyed by (seed, epoch) with the
//      SHARD_ORDER purpose (independent of the sample permutation).
//   2. Interleave: up to k shards are open ("slots"), initially the first k non-empty shards of
//      the shard order. Round robin over the slots, each step emitting the next sample id of the
//      current slot's shard (shard-local ids ascend); an exhausted slot takes the next non-empty
//      shard of the order, or is removed when none is left (the round robin then continues with
//      the slot that moved into its place).
//   3. Buffer: the first min(B, n) interleaved ids fill it. Output step t draws Philox with
//      counter (t/4 lo, t/4 hi, epoch, SHUFFLE_BUFFER) under the seed, takes word t%4 and maps it
//      to j = (word * size) >> 32 (Lemire's multiply-shift without its rejection step: the bias
//      is below size / 2^32, and step t always uses exactly one word); the id at j is emitted and
//      replaced by the next interleaved id, or, when the input is exhausted, by the buffer's last
//      id (the buffer shrinks).
#pragma once

#include <cstdint>
#include <vector>

#include "permutation.h"

namespace resumable_loader {

class ShardLocalStream {
 public:
  ShardLocalStream(const int64_t* shard_sizes, uint64_t num_shards, uint64_t seed, uint32_t epoch,
                   uint64_t window, uint64_t buffer_size, const uint32_t* shard_round_keys);

  uint64_t remaining() const { return total_ - emitted_; }
  uint64_t skip(uint64_t count);                 // advance; returns how many were skipped
  uint64_t fill(int64_t* out, uint64_t count);   // write the next ids; returns how many

 private:
  // Philox blocks drawn per batch of picks (4 picks per block).
  static constexpr uint64_t kPickBlocks = 64;

  bool next_input(int64_t* id);
  bool open_next_shard(uint64_t slot);
  void draw_picks(uint64_t block);
  template <bool kWrite>
  uint64_t advance(int64_t* out, uint64_t count);

  struct Slot {
    int64_t next;
    int64_t end;
  };

  std::vector<int64_t> offsets_;  // first global id of each shard, and the total at the end
  FeistelPermutation shard_order_;
  uint64_t next_in_order_ = 0;
  std::vector<Slot> slots_;
  uint64_t turn_ = 0;
  std::vector<int64_t> buffer_;
  uint64_t seed_;
  uint32_t epoch_;
  uint64_t total_;
  uint64_t emitted_ = 0;
  uint32_t words_[4 * kPickBlocks] = {};  // picks of the current batch, drawn at its first step
};

}  // namespace resumable_loader
