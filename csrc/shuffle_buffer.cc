// Shard-local stream; see shuffle_buffer.h for the contract. Everything here is O(1) per id, so
// replaying an epoch's bookkeeping to reach a resume position runs at memory speed.
//
// The picks dominate the cost (one 10-round Philox per 4 ids), so they are drawn
// kPickBlocks blocks at a time with the blocks side by side in arrays: the compiler vectorises
// the rounds across blocks, which a block-at-a-time loop (a serial chain of multiplies) cannot.
// The words are the same as philox4x32() of each counter; only the evaluation order differs.
#include "shuffle_buffer.h"

#include <algorithm>

#include "philox.h"
#include "purposes.h"

namespace resumable_loader {
ShardLocalStream::ShardLocalStream(const int64_t* shard_sizes, uint64_t num_shards,
                                   uint64_t seed, uint32_t epoch, uint64_t window,
                                   uint64_t buffer_size, const uint32_t* shard_round_keys)
    : offsets_(num_shards + 1, 0),
      shard_order_(std::max<uint64_t>(num_shards, 1), shard_round_keys),
      seed_(seed),
      epoch_(epoch) {
  for (uint64_t s = 0; s < num_shards; ++s) offsets_[s + 1] = offsets_[s] + shard_sizes[s];
  total_ = static_cast<uint64_t>(offsets_[num_shards]);
  slots_.reserve(std::min(window, num_shards));
  for (uint64_t s = 0; s < window; ++s) {
    slots_.push_back({0, 0});
    if (!open_next_shard(slots_.size() - 1)) {
      slots_.pop_back();
      break;
    }
  }
  buffer_.reserve(std::min<uint64_t>(buffer_size, total_));
  int64_t id;
  while (buffer_.size() < buffer_size && next_input(&id)) buffer_.push_back(id);
}

bool ShardLocalStream::open_next_shard(uint64_t slot) {
  const uint64_t num_shards = offsets_.size() - 1;
  while (next_in_order_ < num_shards) {
    const uint64_t shard = shard_order_(next_in_order_++);
    if (offsets_[shard + 1] > offsets_[shard]) {
      slots_[slot] = {offsets_[shard], offsets_[shard + 1]};
      return true;
    }
  }
  return false;
}

bool ShardLocalStream::next_input(int64_t* id) {
  if (slots_.empty()) return false;
  Slot& slot = slots_[turn_];
  *id = slot.next++;
  if (slot.next < slot.end || open_next_shard(turn_)) {
    if (++turn_ == slots_.size()) turn_ = 0;  // no division on the hot path
  } else {
    slots_.erase(slots_.begin() + static_cast<std::ptrdiff_t>(turn_));
    if (turn_ >= slots_.size()) turn_ = 0;
  }
  return true;
}

// words_[4 * j + w] = word w of Philox4x32-10 at counter (block + j, epoch, SHUFFLE_BUFFER).
void ShardLocalStream::draw_picks(uint64_t block) {
  uint32_t v0[kPickBlocks], v1[kPickBlocks], v2[kPickBlocks], v3[kPickBlocks];
  for (uint64_t j = 0; j < kPickBlocks; ++j) {
    v0[j] = static_cast<uint32_t>(block + j);
    v1[j] = static_cast<uint32_t>((block + j) >> 32);
    v2[j] = epoch_;
    v3[j] = PURPOSE_SHUFFLE_BUFFER;
  }
  philox4x32_key_t key = {{static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)}};
  for (unsigned round = 0; round < PHILOX4x32_DEFAULT_ROUNDS; ++round) {
    if (round > 0) key = philox4x32bumpkey(key);
    for (uint64_t j = 0; j < kPickBlocks; ++j) {
      const philox4x32_ctr_t out = philox4x32round({{v0[j], v1[j], v2[j], v3[j]}}, key);
      v0[j] = out.v[0];
      v1[j] = out.v[1];
      v2[j] = out.v[2];
      v3[j] = out.v[3];
    }
  }
  for (uint64_t j = 0; j < kPickBlocks; ++j) {
    words_[4 * j] = v0[j];
    words_[4 * j + 1] = v1[j];
    words_[4 * j + 2] = v2[j];
    words_[4 * j + 3] = v3[j];
  }
}

template <bool kWrite>
uint64_t ShardLocalStream::advance(int64_t* out, uint64_t count) {
  count = std::min(count, remaining());
  // The step counter lives in a register: as a member it would be reloaded after every int64
  // store (the compiler must assume the buffer and the slots may alias it).
  const uint64_t first = emitted_;
  for (uint64_t step = first; step < first + count; ++step) {
    const uint64_t word = step % (4 * kPickBlocks);
    if (word == 0) draw_picks(step / 4);
    const uint64_t pick = (static_cast<uint64_t>(words_[word]) * buffer_.size()) >> 32;
    if (kWrite) out[step - first] = buffer_[pick];
    int64_t incoming;
    if (next_input(&incoming)) {
      buffer_[pick] = incoming;
    } else {
      buffer_[pick] = buffer_.back();
      buffer_.pop_back();
    }
  }
  emitted_ = first + count;
  return count;
}

uint64_t ShardLocalStream::skip(uint64_t count) { return advance<false>(nullptr, count); }

uint64_t ShardLocalStream::fill(int64_t* out, uint64_t count) { return advance<true>(out, count); }

}  // namespace resumable_loader
