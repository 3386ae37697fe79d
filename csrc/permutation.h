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

// Rounds by the domain's bit width b, from a chi-square test of the joint distribution of
// (perm(0), perm(n/2)) over random round keys (10^7 to 4*10^8 keys per case). Six rounds leave
// it detectably non-uniform for every b tried up to 11 (b = 3: some pairs 1.6x as likely as
// others; b = 9: 66 sigma; b = 11: 8 sigma); eight are indistinguishable from uniform for
// b = 8..11 (all within 1.3 sigma) but not below (b = 6: 5.8 sigma, b = 7: 6.6 sigma), where
// each round function has so few inputs that b <= 3 needs ~24 rounds. Domains of at most 128
// values therefore get 32 rounds (they cost nothing), larger ones 8 (twice the Luby-Rackoff
// four; the bulk fill is ~10-15% slower than with six).
// Changing this changes every saved order.
constexpr unsigned FEISTEL_MAX_ROUNDS = 32;
constexpr unsigned feistel_rounds(unsigned bits) { return bits <= 7 ? FEISTEL_MAX_ROUNDS : 8; }

// The bulk fill's kernels, which all compute the same values: the portable one, and on x86-64
// builds ones for AVX2 and AVX-512 CPUs. fill() runs the fastest one this CPU supports.
enum class FillKernel { kPortable, kAvx2, kAvx512 };
bool fill_kernel_supported(FillKernel kernel);

class FeistelPermutation {
 public:
  // round_keys: 2 * FEISTEL_MAX_ROUNDS words (drawn from Philox by the caller); round r uses
  // words 2r and 2r + 1, so a domain needing fewer rounds uses a prefix.
  FeistelPermutation(uint64_t n, const uint32_t* round_keys);

  uint64_t size() const { return n_; }
  unsigned bits() const { return hi_bits_ + lo_bits_; }
  unsigned rounds() const { return rounds_; }

  uint64_t operator()(uint64_t position) const;  // requires position < n
  uint64_t inverse(uint64_t value) const;        // requires value < n

  // out[i] = perm(start + i) for i in [0, count); requires start + count <= n.
  void fill(uint64_t start, uint64_t count, int64_t* out) const;
  // As fill(), on this thread only, with the given kernel (so that tests can compare them);
  // requires fill_kernel_supported(kernel).
  void fill_with(FillKernel kernel, uint64_t start, uint64_t count, int64_t* out) const;

 private:
  uint64_t encrypt(uint64_t x) const;
  uint64_t decrypt(uint64_t x) const;
  void fill_serial(uint64_t start, uint64_t count, int64_t* out) const;

  uint64_t n_;
  unsigned hi_bits_;
  unsigned lo_bits_;
  uint32_t hi_mask_;
  uint32_t lo_mask_;
  unsigned rounds_;
  uint32_t keys_[2 * FEISTEL_MAX_ROUNDS];
};

}  // namespace resumable_loader
