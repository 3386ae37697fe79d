// Feistel permutation with cycle walking; see permutation.h for the contract.
//
// The bulk fill is the hot path (an epoch's order is filled in chunks of 65,536 ids). It keeps
// a batch of positions in flight as arrays of 32-bit halves, so that the compiler vectorises
// the rounds, and re-encrypts the values that fell outside [0, n) beside fresh positions
// rather than in passes of their own (see "Bulk fill" below); x86-64 builds carry AVX2 and
// AVX-512 versions of it, picked at run time. Large fills are split across threads. Every
// version computes exactly what operator() does, position by position.
#include "permutation.h"

#include "cpu_targets.h"

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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

constexpr uint64_t kParallelThreshold = uint64_t{1} << 18;
// What a thread of a threaded fill takes at a time: 2 MiB of output (a transparent huge page,
// which numpy's large arrays get), ~0.6 ms. Pieces of 65,536 ids measured 13% slower, likely
// because both threads then write into a huge page while its first write faults it in.
constexpr uint64_t kPiece = uint64_t{1} << 18;

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

// ---- Bulk fill -------------------------------------------------------------------------------
//
// A batch of kLanes lanes, each holding one position's current value as two 32-bit halves in
// separate arrays (structure of arrays: each round is one plain loop over the batch, which the
// compiler vectorises). One step encrypts every lane once, writes every lane's value to its
// output slot, keeps the lanes whose value is still >= n (compacted, in order, to the front) and
// fills the rest of the batch with the next positions. A value that needs walking thus walks on
// in the next step beside fresh positions, instead of in ever smaller passes of its own after
// each block: every step runs on full vectors, and the drain of the last walking values is paid
// once per fill. A slot's last write is its accepted value, since a lane leaves only then.
namespace {

constexpr size_t kLanes = 1024;  // a multiple of 16 (see the compactions); 12 KiB of state
// Lanes record their output slot relative to the segment's start in 32 bits.
constexpr uint64_t kSegment = uint64_t{1} << 31;

#if defined(__GNUC__)
#define RL_ALWAYS_INLINE inline __attribute__((always_inline))
#define RL_NOINLINE __attribute__((noinline))
#else
#define RL_ALWAYS_INLINE inline
#define RL_NOINLINE
#endif

// What a fill kernel reads of the permutation.
struct Network {
  unsigned lo_bits;
  uint32_t hi_mask;
  uint32_t lo_mask;
  uint64_t last;  // n - 1: a value is rejected (>= n) iff it is > last
  // last split like a value: (hi, lo) > last iff hi > last_hi, or hi == last_hi and
  // lo > last_lo. The vector compactions compare so, keeping every lane 32 bits wide.
  uint32_t last_hi;
  uint32_t last_lo;
  unsigned rounds;
  const uint32_t* keys;
};

struct alignas(64) Lanes {
  uint32_t hi[kLanes];
  uint32_t lo[kLanes];
  uint32_t slot[kLanes];  // output index, relative to the segment's start
};

// Every round over lanes [0, count): one plain loop per round, which the compiler vectorises.
RL_ALWAYS_INLINE void encrypt_lanes(const Network& net, Lanes& lanes, size_t count) {
  for (unsigned r = 0; r < net.rounds; ++r) {
    const uint32_t k0 = net.keys[2 * r];
    const uint32_t k1 = net.keys[2 * r + 1];
    if (r % 2 == 0) {
      for (size_t j = 0; j < count; ++j) {
        lanes.hi[j] ^= round_function(lanes.lo[j], k0, k1) & net.hi_mask;
      }
    } else {
      for (size_t j = 0; j < count; ++j) {
        lanes.lo[j] ^= round_function(lanes.hi[j], k0, k1) & net.lo_mask;
      }
    }
  }
}

// A compaction keeps the lanes [0, count) whose value is rejected, in order, at the front of
// the batch, and returns how many; out holds every lane's value by then.
// Portable version: a lane at a time and without branches, moving only the slots; the few kept
// lanes then reload their halves from out (fewer stores than moving three words per lane:
// 3-4% faster with SSE2 or SSE4.1).
struct ScalarCompaction {
  static RL_ALWAYS_INLINE size_t keep_rejected(const Network& net, Lanes& lanes, size_t count,
                                               const int64_t* out) {
    size_t kept = 0;
    for (size_t j = 0; j < count; ++j) {
      lanes.slot[kept] = lanes.slot[j];
      // One 64-bit compare: fewer operations than comparing halves, and no branch (one would
      // be mispredicted for a good part of the lanes, whose values are random).
      kept += ((static_cast<uint64_t>(lanes.hi[j]) << net.lo_bits) | lanes.lo[j]) > net.last;
    }
    for (size_t k = 0; k < kept; ++k) {
      const uint64_t x = static_cast<uint64_t>(out[lanes.slot[k]]);
      lanes.hi[k] = static_cast<uint32_t>(x >> net.lo_bits);
      lanes.lo[k] = static_cast<uint32_t>(x) & net.lo_mask;
    }
    return kept;
  }
};

// out[slot] for the walking lanes [0, count): one scalar store each. Not inlined, so that it is
// compiled for the baseline target even when called from the AVX-512 kernel, whose vectoriser
// would turn it into vpscatterqq: 7% slower overall than plain stores on AMD Zen 4. Unrolled,
// for fewer loop instructions per store: 3% faster overall (AVX2 and AVX-512 kernels).
RL_NOINLINE void write_walking(const Network& net, const Lanes& lanes, size_t count,
                               int64_t* out) {
#pragma GCC unroll 4
  for (size_t j = 0; j < count; ++j) {
    out[lanes.slot[j]] =
        static_cast<int64_t>((static_cast<uint64_t>(lanes.hi[j]) << net.lo_bits) | lanes.lo[j]);
  }
}

// One segment (count <= kSegment) of a fill.
template <typename Compaction>
inline void fill_segment(const Network& net, uint64_t start, uint64_t count, int64_t* out) {
  // Zeroed once: vector compactions read whole vectors, past the last live lane too.
  Lanes lanes = {};
  size_t walking = 0;  // lanes [0, walking) carry values rejected in the previous step
  uint64_t next = 0;   // the next position to enter, relative to start
  while (walking > 0 || next < count) {
    const size_t fresh = static_cast<size_t>(std::min<uint64_t>(kLanes - walking, count - next));
    uint32_t* hi = lanes.hi + walking;
    uint32_t* lo = lanes.lo + walking;
    uint32_t* slot = lanes.slot + walking;
    for (size_t j = 0; j < fresh; ++j) {
      const uint64_t x = start + next + j;
      hi[j] = static_cast<uint32_t>(x >> net.lo_bits);
      lo[j] = static_cast<uint32_t>(x) & net.lo_mask;
      slot[j] = static_cast<uint32_t>(next + j);
    }
    const size_t active = walking + fresh;
    encrypt_lanes(net, lanes, active);
    write_walking(net, lanes, walking, out);
    int64_t* fresh_out = out + next;
    for (size_t j = 0; j < fresh; ++j) {
      fresh_out[j] = static_cast<int64_t>((static_cast<uint64_t>(hi[j]) << net.lo_bits) | lo[j]);
    }
    next += fresh;
    walking = Compaction::keep_rejected(net, lanes, active, out);
  }
}

template <typename Compaction>
inline void fill_segments(const Network& net, uint64_t start, uint64_t count, int64_t* out) {
  for (uint64_t done = 0; done < count; done += kSegment) {
    fill_segment<Compaction>(net, start + done, std::min(kSegment, count - done), out + done);
  }
}

void fill_portable(const Network& net, uint64_t start, uint64_t count, int64_t* out) {
  fill_segments<ScalarCompaction>(net, start, count, out);
}

#if defined(__x86_64__) && defined(__GNUC__)
// x86-64 builds also carry AVX2 and AVX-512 kernels (cpu_targets.h): the same source compiled
// for those targets (the rounds vectorise 8 or 16 lanes wide, vs 4 with baseline SSE2, which
// lacks a 32-bit vector multiply) with a compaction that packs a vector of lanes at a time.

// AVX2 packs 8 lanes by a permutation looked up by their 8-bit mask: byte i of entry m is the
// index of the i-th set bit of m.
struct PackTable {
  uint64_t entry[256];
  constexpr PackTable() : entry() {
    for (unsigned mask = 0; mask < 256; ++mask) {
      unsigned packed = 0;
      for (unsigned lane = 0; lane < 8; ++lane) {
        if (mask & (1u << lane)) entry[mask] |= uint64_t{lane} << (8 * packed++);
      }
    }
  }
};
constexpr PackTable kPackTable;

struct Avx2Compaction {
  static RL_TARGET_AVX2 inline size_t keep_rejected(const Network& net, Lanes& lanes,
                                                    size_t count, const int64_t* /*out*/) {
    // AVX2 compares signed: unsigned order is signed order with the top bits flipped.
    const __m256i flip = _mm256_set1_epi32(INT32_MIN);
    const __m256i last_hi = _mm256_set1_epi32(static_cast<int>(net.last_hi));
    const __m256i last_hi_flipped = _mm256_xor_si256(last_hi, flip);
    const __m256i last_lo_flipped =
        _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(net.last_lo)), flip);
    size_t kept = 0;
    for (size_t j = 0; j < count; j += 8) {
      const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes.hi + j));
      const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes.lo + j));
      const __m256i slot = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes.slot + j));
      const __m256i hi_above = _mm256_cmpgt_epi32(_mm256_xor_si256(hi, flip), last_hi_flipped);
      const __m256i hi_level = _mm256_cmpeq_epi32(hi, last_hi);
      const __m256i lo_above = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, flip), last_lo_flipped);
      const __m256i reject = _mm256_or_si256(hi_above, _mm256_and_si256(hi_level, lo_above));
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(reject)));
      if (count - j < 8) mask &= (1u << (count - j)) - 1;
      const __m256i order = _mm256_cvtepu8_epi32(
          _mm_cvtsi64_si128(static_cast<long long>(kPackTable.entry[mask])));
      // kept <= j: the stores land on lanes already read.
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes.hi + kept),
                          _mm256_permutevar8x32_epi32(hi, order));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes.lo + kept),
                          _mm256_permutevar8x32_epi32(lo, order));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes.slot + kept),
                          _mm256_permutevar8x32_epi32(slot, order));
      kept += static_cast<size_t>(__builtin_popcount(mask));
    }
    return kept;
  }
};

// AVX-512 packs 16 lanes with vpcompressd into a register, then stores it whole (compressing
// straight to memory is microcoded and slow on AMD Zen 4).
struct Avx512Compaction {
  static RL_TARGET_AVX512 inline size_t keep_rejected(const Network& net, Lanes& lanes,
                                                      size_t count, const int64_t* /*out*/) {
    const __m512i last_hi = _mm512_set1_epi32(static_cast<int>(net.last_hi));
    const __m512i last_lo = _mm512_set1_epi32(static_cast<int>(net.last_lo));
    size_t kept = 0;
    for (size_t j = 0; j < count; j += 16) {
      const __mmask16 live =
          count - j >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << (count - j)) - 1);
      const __m512i hi = _mm512_load_si512(lanes.hi + j);
      const __m512i lo = _mm512_load_si512(lanes.lo + j);
      const __m512i slot = _mm512_load_si512(lanes.slot + j);
      const __mmask16 reject =
          _mm512_mask_cmpgt_epu32_mask(live, hi, last_hi) |
          (_mm512_mask_cmpeq_epu32_mask(live, hi, last_hi) & _mm512_cmpgt_epu32_mask(lo, last_lo));
      // kept <= j: the stores land on lanes already read.
      _mm512_storeu_si512(lanes.hi + kept, _mm512_maskz_compress_epi32(reject, hi));
      _mm512_storeu_si512(lanes.lo + kept, _mm512_maskz_compress_epi32(reject, lo));
      _mm512_storeu_si512(lanes.slot + kept, _mm512_maskz_compress_epi32(reject, slot));
      kept += static_cast<size_t>(__builtin_popcount(reject));
    }
    return kept;
  }
};

// flatten: everything the kernel calls (but write_walking) is compiled into it, for its target.
RL_TARGET_AVX2 __attribute__((flatten)) void fill_avx2(const Network& net, uint64_t start,
                                                       uint64_t count, int64_t* out) {
  fill_segments<Avx2Compaction>(net, start, count, out);
}

RL_TARGET_AVX512 __attribute__((flatten)) void fill_avx512(const Network& net, uint64_t start,
                                                           uint64_t count, int64_t* out) {
  fill_segments<Avx512Compaction>(net, start, count, out);
}
#endif

using Kernel = void (*)(const Network&, uint64_t, uint64_t, int64_t*);

// The kernel of that name, or null where this build or this CPU has none.
Kernel kernel_named(FillKernel name) {
  switch (name) {
    case FillKernel::kPortable:
      return fill_portable;
#if defined(__x86_64__) && defined(__GNUC__)
    case FillKernel::kAvx2:
      return cpu_runs_avx2() ? fill_avx2 : nullptr;
    case FillKernel::kAvx512:
      return cpu_runs_avx512() ? fill_avx512 : nullptr;
#else
    case FillKernel::kAvx2:
    case FillKernel::kAvx512:
      return nullptr;
#endif
  }
  return nullptr;
}

FillKernel fastest_kernel() {
  for (FillKernel name : {FillKernel::kAvx512, FillKernel::kAvx2}) {
    if (kernel_named(name) != nullptr) return name;
  }
  return FillKernel::kPortable;
}

}  // namespace

bool fill_kernel_supported(FillKernel kernel) { return kernel_named(kernel) != nullptr; }

void FeistelPermutation::fill_with(FillKernel kernel, uint64_t start, uint64_t count,
                                   int64_t* out) const {
  const uint64_t last = n_ - 1;
  const Network net{lo_bits_,
                    hi_mask_,
                    lo_mask_,
                    last,
                    static_cast<uint32_t>(last >> lo_bits_),
                    static_cast<uint32_t>(last) & lo_mask_,
                    rounds_,
                    keys_};
  kernel_named(kernel)(net, start, count, out);
}

void FeistelPermutation::fill_serial(uint64_t start, uint64_t count, int64_t* out) const {
  static const FillKernel fastest = fastest_kernel();
  fill_with(fastest, start, count, out);
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
  // Threads take pieces from a shared counter rather than fixed shares: on a busy machine a
  // helper that gets little CPU time (another process on its core, the training loop) then
  // holds up the fill by one piece at most, not by half of it. Every position's value is
  // independent of who computes it, so the output is the same.
  std::atomic<uint64_t> taken{0};
  auto work = [&] {
    for (uint64_t first; (first = taken.fetch_add(kPiece)) < count;) {
      fill_serial(start + first, std::min(kPiece, count - first), out + first);
    }
  };
  std::vector<std::thread> helpers;
  try {
    for (uint64_t t = 1; t < threads; ++t) helpers.emplace_back(work);
  } catch (const std::system_error&) {
    // No more threads to be had (a process limit): the ones started and this one share it all.
  }
  work();
  for (auto& helper : helpers) helper.join();
}

}  // namespace resumable_loader
