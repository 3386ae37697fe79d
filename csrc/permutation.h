// A keyed, random-access bijection of [0, n) for every n in [1, 2^63].
//
// Contract:
//   - For fixed (n, round keys), perm(i) for i in [0, n) is a permutation of [0, n): each value
//     is produced by exactly one i (tested exhaustively for every n <= 2000 and for
//     n = 65537, 262145, 1048577, where other index shuffles are known not to be bijections).
//   - inverse(perm(i)) == i.
//   - perm(i) depends only on (n, round keys, i): any position is computed directly, in O(1)
//     expected time, so an order can be resumed at any position without replaying it.
//
// Construction: a Feistel network on [0, 2^b), b = bit width of n-1, whose two halves may differ
// in width by one bit (hi = ceil(b/2) bits, lo = floor(b/2)); even rounds update the hi half
// from the lo half, odd rounds the lo half from the hi half (each round is an XOR with a function
// of the other half, hence invertible). Values >= n are re-encrypted until they fall in [0, n)
// ("cycle walking", Black & Rogaway 2002): since 2^b < 2n, fewer than two encryptions are
// needed on average. The domain never pads to a minimum block, so small n stay cheap.
#pragma once

#include <cstddef>
#include <cstdint>

namespace resumable_loader {

// Six rounds: each round function fully mixes its (<= 32-bit) input half, and four rounds
// already make a pseudorandom permutation for independent round functions (Luby-Rackoff); two
// more cover the unbalanced halves. Changing this changes every saved order.
constexpr int FEISTEL_ROUNDS = 6;

class FeistelPermutation {
 public:
  // round_keys: 2 * FEISTEL_ROUNDS words (drawn from Philox by the caller).
  FeistelPermutation(uint64_t n, const uint32_t* round_keys);

  uint64_t size() const { return n_; }
  unsigned bits() const { return hi_bits_ + lo_bits_; }

  uint64_t operator()(uint64_t position) const;  // requires position < n
  uint64_t inverse(uint64_t value) const;        // requires value < n

  // out[i] = perm(start + i) for i in [0, count); requires start + count <= n.
  void fill(uint64_t start, uint64_t count, int64_t* out) const;

 private:
  uint64_t encrypt(uint64_t x) const;
  uint64_t decrypt(uint64_t x) const;
  void fill_serial(uint64_t start, uint64_t count, int64_t* out) const;

  uint64_t n_;
  unsigned hi_bits_;
  unsigned lo_bits_;
  uint32_t hi_mask_;
  uint32_t lo_mask_;
  uint32_t keys_[2 * FEISTEL_ROUNDS];
};

}  // namespace resumable_loader
