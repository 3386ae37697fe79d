// Feistel permutation with cycle walking; see permutation.h for the contract.
//
// The bulk fill is the hot path (an epoch's order is filled in chunks): it runs the rounds over
// blocks of 1024 positions held as two arrays of 32-bit halves, so the compiler vectorises the
// round function, re-encrypts only the values that fell outside [0, n) (compacted, so each
// further pass costs in proportion to what is left), and splits large fills across threads.
#include "permutation.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace resumable_loader {
namespace {

// Round function: a 32-bit mixer (xor-shift-multiply, constants from Wang/murmur finalisers)
// keyed twice so that every key bit reaches every output bit.
inline uint32_t round_function(uint32_t half, uint32_t k0, uint32_t k1) {
  uint32_t h = half ^ k0;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h ^= k1;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

constexpr size_t kBlock = 1024;
constexpr uint64_t kParallelThreshold = uint64_t{1} << 18;

}  // namespace

FeistelPermutation::FeistelPermutation(uint64_t n, const uint32_t* round_keys) : n_(n) {
  const unsigned b = n <= 1 ? 0 : 64 - static_cast<unsigned>(__builtin_clzll(n - 1));
  hi_bits_ = (b + 1) / 2;
  lo_bits_ = b / 2;
  hi_mask_ = hi_bits_ == 0 ? 0 : static_cast<uint32_t>((uint64_t{1} << hi_bits_) - 1);
  lo_mask_ = lo_bits_ == 0 ? 0 : static_cast<uint32_t>((uint64_t{1} << lo_bits_) - 1);
  rounds_ = feistel_rounds(b);
  std::copy(round_keys, round_keys + 2 * FEISTEL_MAX_ROUNDS, keys_);
}

uint64_t FeistelPermutation::encrypt(uint64_t x) const {
  uint32_t hi = static_cast<uint32_t>(x >> lo_bits_);
  uint32_t lo = static_cast<uint32_t>(x) & lo_mask_;
  for (unsigned r = 0; r < rounds_; ++r) {
    if (r % 2 == 0) {
      hi ^= round_function(lo, keys_[2 * r], keys_[2 * r + 1]) & hi_mask_;
    } else {
      lo ^= round_function(hi, keys_[2 * r], keys_[2 * r + 1]) & lo_mask_;
    }
  }
  return (static_cast<uint64_t>(hi) << lo_bits_) | lo;
}

uint64_t FeistelPermutation::decrypt(uint64_t x) const {
  uint32_t hi = static_cast<uint32_t>(x >> lo_bits_);
  uint32_t lo = static_cast<uint32_t>(x) & lo_mask_;
  for (unsigned r = rounds_; r-- > 0;) {
    if (r % 2 == 0) {
      hi ^= round_function(lo, keys_[2 * r], keys_[2 * r + 1]) & hi_mask_;
    } else {
      lo ^= round_function(hi, keys_[2 * r], keys_[2 * r + 1]) & lo_mask_;
    }
  }
  return (static_cast<uint64_t>(hi) << lo_bits_) | lo;
}

uint64_t FeistelPermutation::operator()(uint64_t position) const {
  uint64_t x = encrypt(position);
  while (x >= n_) x = encrypt(x);
  return x;
}

uint64_t FeistelPermutation::inverse(uint64_t value) const {
  uint64_t x = decrypt(value);
  while (x >= n_) x = decrypt(x);
  return x;
}

// Compiled twice, for AVX2 and for baseline x86-64, chosen at load time: AVX2's 8-lane 32-bit
// multiply is what makes the round loops vectorise.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default")))
#endif
void FeistelPermutation::fill_serial(uint64_t start, uint64_t count, int64_t* out) const {
  alignas(64) uint32_t hi[kBlock];
  alignas(64) uint32_t lo[kBlock];
  alignas(64) uint32_t slot[kBlock];
  // Every round over `active` lanes; a plain loop per round, so the compiler vectorises it.
  auto encrypt_lanes = [&](size_t active) {
    for (unsigned r = 0; r < rounds_; ++r) {
      const uint32_t k0 = keys_[2 * r];
      const uint32_t k1 = keys_[2 * r + 1];
      if (r % 2 == 0) {
        for (size_t j = 0; j < active; ++j) hi[j] ^= round_function(lo[j], k0, k1) & hi_mask_;
      } else {
        for (size_t j = 0; j < active; ++j) lo[j] ^= round_function(hi[j], k0, k1) & lo_mask_;
      }
    }
  };
  for (uint64_t base = 0; base < count; base += kBlock) {
    const size_t size = static_cast<size_t>(std::min<uint64_t>(kBlock, count - base));
    int64_t* block = out + base;
    // First pass over the whole block, written in place: vectorised end to end.
    for (size_t j = 0; j < size; ++j) {
      const uint64_t x = start + base + j;
      hi[j] = static_cast<uint32_t>(x >> lo_bits_);
      lo[j] = static_cast<uint32_t>(x) & lo_mask_;
    }
    encrypt_lanes(size);
    for (size_t j = 0; j < size; ++j) {
      block[j] = static_cast<int64_t>((static_cast<uint64_t>(hi[j]) << lo_bits_) | lo[j]);
    }
    // Cycle walking: only the slots whose value is still >= n are re-encrypted, compacted.
    size_t active = 0;
    for (size_t j = 0; j < size; ++j) {
      slot[active] = static_cast<uint32_t>(j);
      active += static_cast<uint64_t>(block[j]) >= n_;
    }
    while (active > 0) {
      for (size_t k = 0; k < active; ++k) {
        const uint64_t x = static_cast<uint64_t>(block[slot[k]]);
        hi[k] = static_cast<uint32_t>(x >> lo_bits_);
        lo[k] = static_cast<uint32_t>(x) & lo_mask_;
      }
      encrypt_lanes(active);
      size_t walking = 0;
      for (size_t k = 0; k < active; ++k) {
        const uint64_t x = (static_cast<uint64_t>(hi[k]) << lo_bits_) | lo[k];
        block[slot[k]] = static_cast<int64_t>(x);
        slot[walking] = slot[k];
        walking += x >= n_;
      }
      active = walking;
    }
  }
}

void FeistelPermutation::fill(uint64_t start, uint64_t count, int64_t* out) const {
  if (count < kParallelThreshold) {
    fill_serial(start, count, out);
    return;
  }
  // Asked once: libstdc++ reads /sys on every call (~8 us, 5% of a 65,536-id chunk's fill).
  static const uint64_t hardware = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t threads = std::min<uint64_t>({hardware, 8, count / kParallelThreshold + 1});
  if (threads < 2) {
    fill_serial(start, count, out);
    return;
  }
  // Thread t fills [bound(t), bound(t + 1)); block-aligned shares, the last one takes the rest.
  const uint64_t share = (count / threads + kBlock - 1) / kBlock * kBlock;
  auto bound = [&](uint64_t t) { return t == threads ? count : std::min(count, t * share); };
  std::vector<std::thread> helpers;
  for (uint64_t t = 1; t < threads; ++t) {
    const uint64_t first = bound(t);
    const uint64_t size = bound(t + 1) - first;
    helpers.emplace_back([=] { fill_serial(start + first, size, out + first); });
  }
  fill_serial(start, bound(1), out);
  for (auto& helper : helpers) helper.join();
}

}  // namespace resumable_loader
