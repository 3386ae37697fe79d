// Shard-local stream; see shuffle_buffer.h for the contract. Everything here is O(1) per id, so
// replaying an epoch's bookkeeping to reach a resume position runs at memory speed.
#include "shuffle_buffer.h"

#include <algorithm>

#include "philox.h"

namespace resumable_loader {
namespace {
constexpr uint32_t kPurposeShuffleBuffer = 5;
}  // namespace

ShardLocalStream::ShardLocalStream(const int64_t* shard_sizes, uint64_t num_shards,
                                   uint64_t seed, uint32_t epoch, uint64_t window,
                                   uint64_t buffer_size, const uint32_t* shard_round_keys)
    : offsets_(num_shards + 1, 0),
      shard_order_(std::max<uint64_t>(num_shards, 1), shard_round_keys),
      seed_(seed),
      epoch_(epoch) {
  for (uint64_t s = 0; s < num_shards; ++s) offsets_[s + 1] = offsets_[s] + shard_sizes[s];
  total_ = static_cast<uint64_t>(offsets_[num_shards]);
  if (num_shards == 0) next_in_order_ = 1;  // nothing to open
  slots_.reserve(window);
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

int64_t ShardLocalStream::next_output() {
  const uint64_t step = emitted_++;
  if (step % 4 == 0) {
    const uint64_t block = step / 4;
    const philox4x32_ctr_t ctr = {{static_cast<uint32_t>(block),
                                   static_cast<uint32_t>(block >> 32), epoch_,
                                   kPurposeShuffleBuffer}};
    const philox4x32_key_t key = {{static_cast<uint32_t>(seed_),
                                   static_cast<uint32_t>(seed_ >> 32)}};
    const philox4x32_ctr_t out = philox4x32(ctr, key);
    std::copy(out.v, out.v + 4, words_);
  }
  const uint64_t pick = (static_cast<uint64_t>(words_[step % 4]) * buffer_.size()) >> 32;
  const int64_t id = buffer_[pick];
  int64_t incoming;
  if (next_input(&incoming)) {
    buffer_[pick] = incoming;
  } else {
    buffer_[pick] = buffer_.back();
    buffer_.pop_back();
  }
  return id;
}

uint64_t ShardLocalStream::skip(uint64_t count) {
  count = std::min(count, remaining());
  for (uint64_t i = 0; i < count; ++i) next_output();
  return count;
}

uint64_t ShardLocalStream::fill(int64_t* out, uint64_t count) {
  count = std::min(count, remaining());
  for (uint64_t i = 0; i < count; ++i) out[i] = next_output();
  return count;
}

}  // namespace resumable_loader
