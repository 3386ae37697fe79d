// Philox4x32-R: the counter-based generator of Random123 (Salmon, Moraes, Dror, Shaw, "Parallel
// Random Numbers: As Easy as 1, 2, 3", SC11), bit-for-bit. A pure function of (counter, key):
// any block of the stream is computed directly, which is what makes the loader's order and
// per-sample randomness resumable without replaying anything.
//
// Names follow Random123's include/Random123/philox.h so its known-answer vectors and papers map
// onto this file directly. Header-only; no framework, no Python.
#pragma once

#include <cassert>
#include <cstdint>

namespace resumable_loader {

// Multipliers of the two products in a round.
constexpr uint32_t PHILOX_M4x32_0 = 0xD2511F53u;
constexpr uint32_t PHILOX_M4x32_1 = 0xCD9E8D57u;
// Weyl-sequence steps added to the key between rounds.
constexpr uint32_t PHILOX_W32_0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t PHILOX_W32_1 = 0xBB67AE85u;  // sqrt(3)-1

constexpr unsigned PHILOX4x32_DEFAULT_ROUNDS = 10;
// Random123 defines the round-key schedule only up to 16 rounds.
constexpr unsigned PHILOX4x32_MAX_ROUNDS = 16;

struct philox4x32_ctr_t {
  uint32_t v[4];
};
struct philox4x32_key_t {
  uint32_t v[2];
};

// Returns the low 32 bits of a*b and stores the high 32 bits in *hi.
inline uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

inline philox4x32_ctr_t philox4x32round(philox4x32_ctr_t ctr, philox4x32_key_t key) {
  uint32_t hi0;
  uint32_t hi1;
  const uint32_t lo0 = mulhilo32(PHILOX_M4x32_0, ctr.v[0], &hi0);
  const uint32_t lo1 = mulhilo32(PHILOX_M4x32_1, ctr.v[2], &hi1);
  return {{hi1 ^ ctr.v[1] ^ key.v[0], lo1, hi0 ^ ctr.v[3] ^ key.v[1], lo0}};
}

inline philox4x32_key_t philox4x32bumpkey(philox4x32_key_t key) {
  key.v[0] += PHILOX_W32_0;
  key.v[1] += PHILOX_W32_1;
  return key;
}

// R rounds of Philox4x32 (R <= PHILOX4x32_MAX_ROUNDS; callers validate, this only asserts).
// R = 0 returns the counter unchanged, as in Random123.
inline philox4x32_ctr_t philox4x32_R(unsigned R, philox4x32_ctr_t ctr, philox4x32_key_t key) {
  assert(R <= PHILOX4x32_MAX_ROUNDS);
  for (unsigned round = 0; round < R; ++round) {
    if (round > 0) key = philox4x32bumpkey(key);
    ctr = philox4x32round(ctr, key);
  }
  return ctr;
}

// Philox4x32-10, the variant Random123 recommends and the loader uses everywhere.
inline philox4x32_ctr_t philox4x32(philox4x32_ctr_t ctr, philox4x32_key_t key) {
  return philox4x32_R(PHILOX4x32_DEFAULT_ROUNDS, ctr, key);
}

}  // namespace resumable_loader
