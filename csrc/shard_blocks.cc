// Shard-local order; see shard_blocks.h for the contract. A fill walks the lanes once from the
// first block it touches (each lane a cursor that moves front to back through the shards, so
// an id costs a few adds, and locating the lanes costs k binary searches per fill), then
// shuffles each block in place.
//
// The Fisher-Yates words dominate the cost (one 10-round Philox per 4 ids), so they are drawn
// kWordBlocks Philox blocks at a time with the blocks side by side in arrays: the compiler
// vectorises the rounds across blocks, which a block-at-a-time loop (a serial chain of
// multiplies) cannot. The words are those of philox4x32() at each counter.
#include "shard_blocks.h"

#include <algorithm>

#include "philox.h"
#include "purposes.h"

namespace resumable_loader {
namespace {

constexpr uint64_t kWordBlocks = 64;  // Philox blocks drawn at a time (4 words each)

// words[4 * j + w] = word w of Philox4x32-10 at counter (first + j, epoch, SHUFFLE_BUFFER).
void draw_words(uint64_t seed, uint32_t epoch, uint64_t first, uint32_t words[4 * kWordBlocks]) {
  uint32_t v0[kWordBlocks], v1[kWordBlocks], v2[kWordBlocks], v3[kWordBlocks];
  for (uint64_t j = 0; j < kWordBlocks; ++j) {
    v0[j] = static_cast<uint32_t>(first + j);
    v1[j] = static_cast<uint32_t>((first + j) >> 32);
    v2[j] = epoch;
    v3[j] = PURPOSE_SHUFFLE_BUFFER;
  }
  philox4x32_key_t key = {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  for (unsigned round = 0; round < PHILOX4x32_DEFAULT_ROUNDS; ++round) {
    if (round > 0) key = philox4x32bumpkey(key);
    for (uint64_t j = 0; j < kWordBlocks; ++j) {
      const philox4x32_ctr_t out = philox4x32round({{v0[j], v1[j], v2[j], v3[j]}}, key);
      v0[j] = out.v[0];
      v1[j] = out.v[1];
      v2[j] = out.v[2];
      v3[j] = out.v[3];
    }
  }
  for (uint64_t j = 0; j < kWordBlocks; ++j) {
    words[4 * j] = v0[j];
    words[4 * j + 1] = v1[j];
    words[4 * j + 2] = v2[j];
    words[4 * j + 3] = v3[j];
  }
}

}  // namespace

// The interleaved ids from a position on, in order (step 2 of the contract).
class ShardBlockOrder::Lanes {
 public:
  Lanes(const ShardBlockOrder& order, uint64_t position)
      : first_id_(order.first_id_.data()),
        starts_(order.starts_.data()),
        last_slot_(order.starts_.size() - 2),
        lanes_(order.window_),
        rows_(order.total_ / order.window_),
        rest_(order.total_ % order.window_) {
    if (position < lanes_ * rows_) {
      row_ = position / lanes_;
      lane_ = position % lanes_;
    } else {
      row_ = rows_;
      lane_ = position - lanes_ * rows_;
    }
    width_ = row_ < rows_ ? lanes_ : rest_;
    const uint64_t used = std::min(lanes_, order.total_);
    cursors_.resize(used);
    for (uint64_t j = 0; j < used; ++j) {
      const uint64_t offset = row_ + (j < lane_ ? 1 : 0);
      const uint64_t length = rows_ + (j < rest_ ? 1 : 0);
      if (offset >= length) continue;  // this lane has nothing left
      const int64_t v = static_cast<int64_t>(j * rows_ + std::min(j, rest_) + offset);
      // The last slot starting at or before v: a non-empty shard holding v.
      const auto slot = std::upper_bound(starts_, starts_ + last_slot_ + 1, v) - starts_ - 1;
      cursors_[j] = {v, static_cast<uint64_t>(slot)};
    }
  }

  void take(uint64_t count, int64_t* out) {
    for (uint64_t c = 0; c < count;) {
      const uint64_t rows = lane_ == 0 ? whole_rows((count - c) / lanes_) : 0;
      if (rows > 0) {  // rows in which no lane leaves its shard: no checks per id
        for (uint64_t j = 0; j < lanes_; ++j) {
          const Cursor& cursor = cursors_[j];
          const int64_t first = first_id_[cursor.slot] + (cursor.v - starts_[cursor.slot]);
          for (uint64_t r = 0; r < rows; ++r) out[c + r * lanes_ + j] = first + r;
        }
        for (Cursor& cursor : cursors_) advance(cursor, rows);
        row_ += rows;
        width_ = row_ < rows_ ? lanes_ : rest_;
        c += rows * lanes_;
        continue;
      }
      Cursor& cursor = cursors_[lane_];
      out[c++] = first_id_[cursor.slot] + (cursor.v - starts_[cursor.slot]);
      advance(cursor, 1);
      if (++lane_ == width_) {
        lane_ = 0;
        width_ = ++row_ < rows_ ? lanes_ : rest_;
      }
    }
  }

 private:
  struct Cursor {
    int64_t v = 0;      // next offset in V
    uint64_t slot = 0;  // the slot of the shard order holding it
  };

  void advance(Cursor& cursor, uint64_t by) const {
    cursor.v += static_cast<int64_t>(by);
    while (cursor.slot < last_slot_ && cursor.v == starts_[cursor.slot + 1]) ++cursor.slot;
  }

  // How many of the next `wanted` rows are full rows in which every lane stays in its shard.
  uint64_t whole_rows(uint64_t wanted) const {
    uint64_t rows = row_ < rows_ ? std::min(wanted, rows_ - row_) : 0;
    for (uint64_t j = 0; j < lanes_ && rows > 0; ++j) {
      const Cursor& cursor = cursors_[j];
      rows = std::min(rows, static_cast<uint64_t>(starts_[cursor.slot + 1] - cursor.v));
    }
    return rows;
  }

  const int64_t* first_id_;
  const int64_t* starts_;
  uint64_t last_slot_;
  uint64_t lanes_, rows_, rest_;
  uint64_t row_ = 0, lane_ = 0, width_ = 0;
  std::vector<Cursor> cursors_;
};

ShardBlockOrder::ShardBlockOrder(const int64_t* shard_sizes, uint64_t num_shards, uint64_t seed,
                                 uint32_t epoch, uint64_t window, uint64_t block,
                                 const uint32_t* shard_round_keys)
    : first_id_(std::max<uint64_t>(num_shards, 1), 0),
      starts_(std::max<uint64_t>(num_shards, 1) + 1, 0),
      seed_(seed),
      epoch_(epoch),
      window_(window),
      block_(block) {
  std::vector<int64_t> offsets(num_shards + 1, 0);
  for (uint64_t s = 0; s < num_shards; ++s) offsets[s + 1] = offsets[s] + shard_sizes[s];
  // The whole shard order at once: the permutation's bulk fill is vectorised (a resume and a
  // fresh start both pay this, ~1 ms per 10^5 shards, rather than ~6 ms a shard at a time).
  std::vector<int64_t> shard_order(num_shards);
  FeistelPermutation(std::max<uint64_t>(num_shards, 1), shard_round_keys)
      .fill(0, num_shards, shard_order.data());
  for (uint64_t i = 0; i < num_shards; ++i) {
    const int64_t shard = shard_order[i];
    first_id_[i] = offsets[shard];
    starts_[i + 1] = starts_[i] + shard_sizes[shard];
  }
  total_ = static_cast<uint64_t>(offsets[num_shards]);
}

void ShardBlockOrder::shuffle_block(uint64_t first, uint64_t length, int64_t* ids) const {
  uint32_t words[4 * kWordBlocks];
  uint64_t drawn = UINT64_MAX;  // the first Philox block in `words`
  for (uint64_t i = length; i-- > 1;) {
    const uint64_t word = first + i;
    const uint64_t batch = word / (4 * kWordBlocks) * kWordBlocks;
    if (batch != drawn) draw_words(seed_, epoch_, drawn = batch, words);
    const uint64_t j = (static_cast<uint64_t>(words[word - 4 * batch]) * (i + 1)) >> 32;
    std::swap(ids[i], ids[j]);
  }
}

ShardBlockOrder::Reader::Reader(const ShardBlockOrder& order, uint64_t position)
    : order_(order),
      lanes_(std::make_unique<Lanes>(order, position / order.block_ * order.block_)),
      block_first_(position / order.block_ * order.block_),
      position_(position) {
  if (block_first_ < order.total_) {
    block_.resize(std::min(order.block_, order.total_ - block_first_));
    lanes_->take(block_.size(), block_.data());
    order.shuffle_block(block_first_, block_.size(), block_.data());
  }
}

ShardBlockOrder::Reader::~Reader() = default;

uint64_t ShardBlockOrder::Reader::read(int64_t* out, uint64_t count) {
  count = std::min(count, remaining());
  for (uint64_t done = 0; done < count;) {
    const uint64_t next = std::min(order_.block_, order_.total_ - position_);
    if (position_ == block_first_ + block_.size() && count - done >= next && next > 0) {
      lanes_->take(next, out + done);  // a whole block wanted: shuffled where it goes
      order_.shuffle_block(position_, next, out + done);
      block_first_ = position_ += next;
      block_.clear();
      done += next;
      continue;
    }
    if (position_ == block_first_ + block_.size()) {  // on to the next block
      block_first_ = position_;
      block_.resize(std::min(order_.block_, order_.total_ - block_first_));
      lanes_->take(block_.size(), block_.data());
      order_.shuffle_block(block_first_, block_.size(), block_.data());
    }
    const uint64_t offset = position_ - block_first_;
    const uint64_t step = std::min(count - done, block_.size() - offset);
    std::copy(block_.begin() + offset, block_.begin() + (offset + step), out + done);
    done += step;
    position_ += step;
  }
  return count;
}

void ShardBlockOrder::fill(uint64_t start, uint64_t count, int64_t* out) const {
  if (count == 0) return;
  const uint64_t stop = start + count;
  uint64_t first = start / block_ * block_;
  Lanes lanes(*this, first);
  std::vector<int64_t> partial;  // a block the request only partly covers
  for (; first < stop; first += block_) {
    const uint64_t length = std::min(block_, total_ - first);
    if (first >= start && first + length <= stop) {
      int64_t* ids = out + (first - start);
      lanes.take(length, ids);
      shuffle_block(first, length, ids);
      continue;
    }
    partial.resize(length);
    lanes.take(length, partial.data());
    shuffle_block(first, length, partial.data());
    const uint64_t lo = std::max(start, first);
    const uint64_t hi = std::min(stop, first + length);
    std::copy(partial.begin() + (lo - first), partial.begin() + (hi - first), out + (lo - start));
  }
}

}  // namespace resumable_loader
