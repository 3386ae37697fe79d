// Seeds an MT19937 state in place exactly as numpy's legacy `np.random.seed(uint32 array)` does
// (Matsumoto & Nishimura's init_by_array, mt19937ar.c), so the per-sample reseed of numpy's
// global RNG costs a few microseconds instead of numpy's ~12 us array-seeding path.
//
// Contract: `state` points at numpy's `mt19937_state` {uint32_t key[624]; int pos;}, the layout
// numpy has used since 1.17; the Python caller checks the result against np.random.seed once
// per process and falls back to np.random.seed if it ever differs.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

namespace resumable_loader {

constexpr int MT19937_N = 624;

struct mt19937_state_layout {
  uint32_t key[MT19937_N];
  int pos;
};

inline void mt19937_init_by_array(mt19937_state_layout* state, const uint32_t* init_key,
                                  size_t key_length) {
  // init_by_array starts from init_genrand(19650218), a constant table: computed once.
  static const auto initial = [] {
    std::array<uint32_t, MT19937_N> table{};
    table[0] = 19650218u;
    for (int i = 1; i < MT19937_N; ++i) {
      table[i] = 1812433253u * (table[i - 1] ^ (table[i - 1] >> 30)) + static_cast<uint32_t>(i);
    }
    return table;
  }();
  uint32_t* mt = state->key;
  std::copy(initial.begin(), initial.end(), mt);
  int i = 1;
  size_t j = 0;
  for (size_t k = (MT19937_N > key_length ? MT19937_N : key_length); k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + init_key[j] +
            static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= MT19937_N) {
      mt[0] = mt[MT19937_N - 1];
      i = 1;
    }
    if (j >= key_length) j = 0;
  }
  for (int k = MT19937_N - 1; k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= MT19937_N) {
      mt[0] = mt[MT19937_N - 1];
      i = 1;
    }
  }
  mt[0] = 0x80000000u;  // most significant bit set: a non-zero initial array
  state->pos = MT19937_N;
}

}  // namespace resumable_loader
