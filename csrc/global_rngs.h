// The states of the three process-global generators that augmentations draw from (Python's
// `random`, numpy's legacy global RNG, torch's CPU default generator), computed from a sample's
// key and written in place, so that the per-sample reseed costs about a microsecond instead of
// the ~10 us their own seeding functions take together.
//
// All three are MT19937. Generator g (kPython, kNumpy, kTorch) gets its own 64-bit seed,
// Philox4x32-10 of counter (w2, w3, g, 0) under key (w0, w1) of the sample's key words, so the
// three never draw the same stream (seeding Python's and numpy's with the same words would: both
// run init_by_array and make doubles the same way). Its 624 state words are consecutive
// SplitMix64 outputs of that seed (Steele, Lea, Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014), the usual way to fill a large state from a small seed. The state
// is installed as if just twisted (the first draws read its words, tempered: 624 of them for
// Python and numpy, 623 for torch, whose engine twists when its count of words left reaches 0)
// with no cached Gaussian: a sample that draws a few numbers then costs no twist of 624 words. torch's own manual_seed keeps only 32 bits of its seed; this gives it 64.
//
// Contract: the layouts below are the libraries' own (CPython's RandomObject, numpy's
// mt19937_state and aug_bitgen_t, torch's CPUGeneratorImplState); the Python caller finds and
// checks every address against each library's public get/set-state API once per process and
// falls back to that API wherever a check fails.
#pragma once

#include <cstdint>
#include <cstring>
#include <mutex>

#include "philox.h"

namespace resumable_loader {

constexpr int MT19937_N = 624;
// torch.initial_seed() reports the seed as an int64 (default_collate of it overflows above
// 2**63 - 1), so the seed torch is told keeps 63 bits; its state words use all 64.
constexpr uint64_t TORCH_SEED_MASK = (uint64_t{1} << 63) - 1;

enum GlobalRng : uint32_t { kPython = 0, kNumpy = 1, kTorch = 2 };
// A set of generators, bit g for GlobalRng g: which ones an operation covers.
constexpr uint32_t kAllGlobalRngs = (1u << kPython) | (1u << kNumpy) | (1u << kTorch);
inline bool covers(uint32_t generators, GlobalRng g) { return (generators >> g & 1u) != 0; }

inline uint64_t global_rng_seed(const uint32_t key[4], GlobalRng generator) {
  const philox4x32_ctr_t block =
      philox4x32({{key[2], key[3], static_cast<uint32_t>(generator), 0}}, {{key[0], key[1]}});
  return block.v[0] | static_cast<uint64_t>(block.v[1]) << 32;
}

// The 624 MT19937 state words of `generator` for a sample key; torch's legacy state holds each
// word widened to 64 bits, written so directly.
void mt19937_state_words(const uint32_t key[4], GlobalRng generator, uint32_t out[MT19937_N]);
void mt19937_state_words(const uint32_t key[4], GlobalRng generator, uint64_t out[MT19937_N]);
// The same words by a named kernel ("portable", "avx512"), for tests; false where this build or
// this CPU has no such kernel.
bool mt19937_state_words_with(const char* kernel, const uint32_t key[4], GlobalRng generator,
                              uint32_t out[MT19937_N]);

// torch's CPUGeneratorImplState (aten/src/ATen/CPUGeneratorImpl.cpp), the bytes that
// torch.Generator.get_state() returns and set_state() takes.
struct TorchCpuGeneratorStateLegacy {
  uint64_t the_initial_seed;
  int left;
  int seeded;
  uint64_t next;
  uint64_t state[MT19937_N];
  double normal_x;
  double normal_y;
  double normal_rho;
  int normal_is_valid;
};
struct TorchCpuGeneratorState {
  TorchCpuGeneratorStateLegacy legacy_pod;
  float next_float_normal_sample;
  bool is_next_float_normal_sample_valid;
};
constexpr size_t TORCH_CPU_GENERATOR_STATE_SIZE = sizeof(TorchCpuGeneratorState);

// The fields of torch's CPUGeneratorImpl (aten/src/ATen/CPUGeneratorImpl.h) after its
// GeneratorImpl base: the engine's mt19937_data_pod (ATen/core/MT19937RNGEngine.h), then the
// two cached normals as std::optional (libstdc++: the value, then the engaged flag). Written in
// place, under the generator's own mutex (GeneratorImpl::mutex_, a std::mutex), they spare
// torch's set_state: a Python call, a check of the tensor and a copy of 624 words.
struct TorchMt19937Data {
  uint64_t seed;
  int left;
  bool seeded;
  uint32_t next;
  uint32_t state[MT19937_N];
};
struct TorchCpuGeneratorFields {
  TorchMt19937Data engine;
  float next_float_normal;
  bool next_float_normal_engaged;
  double next_double_normal;
  bool next_double_normal_engaged;
};
constexpr size_t TORCH_CPU_GENERATOR_FIELDS_SIZE = sizeof(TorchCpuGeneratorFields);

// A copy of the generator states the targets cover (torch's only where written in place).
struct GlobalRngSnapshot {
  uint32_t python_state[MT19937_N];
  int python_index;
  uint32_t numpy_key[MT19937_N];
  int numpy_pos;
  int numpy_has_gauss;
  double numpy_gauss;
  TorchCpuGeneratorFields torch_fields;
};

// Where each generator's state lives in this process; a null pointer skips that generator.
struct GlobalRngTargets {
  uint32_t* python_state = nullptr;  // CPython RandomObject: {int index; uint32_t state[624]}
  int* python_index = nullptr;
  uint32_t* numpy_key = nullptr;  // numpy mt19937_state: {uint32_t key[624]; int pos}
  int* numpy_pos = nullptr;
  int* numpy_has_gauss = nullptr;  // numpy RandomState's aug_bitgen_t {.., has_gauss, gauss};
  double* numpy_gauss = nullptr;   // set whenever numpy_key is
  TorchCpuGeneratorState* torch_state = nullptr;  // a buffer for torch.Generator.set_state
  // Or torch's generator itself, written in place under its mutex (torch_state is then unused).
  TorchCpuGeneratorFields* torch_fields = nullptr;
  std::mutex* torch_mutex = nullptr;

  // Each generator's state for a sample key, where its target is set.
  void reseed_python(const uint32_t key[4]) const;
  void reseed_numpy(const uint32_t key[4]) const;
  void reseed_torch(const uint32_t key[4]) const;
  void reseed(const uint32_t key[4]) const {
    reseed_python(key);
    reseed_numpy(key);
    reseed_torch(key);
  }

  // The states reseed(key) writes, as a snapshot, writing no target (torch's fields only
  // where they are written in place).
  static void snapshot_of(const uint32_t key[4], GlobalRngSnapshot& to);
  // The generators among `generators` whose state now differs from `from` in anything a draw
  // reads or moves (state words, position, cached normals); torch's counted only where it is
  // written in place. Any draw moves a position, and no sequence of draws brings it back.
  uint32_t differs(const GlobalRngSnapshot& from, uint32_t generators) const;

  // Copy the states this object writes, so that loading in the main process (num_workers=0)
  // can leave the training loop's own randomness as it found it.
  void save(GlobalRngSnapshot& to) const {
    if (python_state != nullptr) {
      std::memcpy(to.python_state, python_state, sizeof(to.python_state));
      to.python_index = *python_index;
    }
    if (numpy_key != nullptr) {
      std::memcpy(to.numpy_key, numpy_key, sizeof(to.numpy_key));
      to.numpy_pos = *numpy_pos;
      to.numpy_has_gauss = *numpy_has_gauss;
      to.numpy_gauss = *numpy_gauss;
    }
    if (torch_fields != nullptr) {
      std::lock_guard<std::mutex> hold(*torch_mutex);
      std::memcpy(&to.torch_fields, torch_fields, sizeof(to.torch_fields));
    }
  }

  void restore(const GlobalRngSnapshot& from, uint32_t generators = kAllGlobalRngs) const {
    if (python_state != nullptr && covers(generators, kPython)) {
      std::memcpy(python_state, from.python_state, sizeof(from.python_state));
      *python_index = from.python_index;
    }
    if (numpy_key != nullptr && covers(generators, kNumpy)) {
      std::memcpy(numpy_key, from.numpy_key, sizeof(from.numpy_key));
      *numpy_pos = from.numpy_pos;
      *numpy_has_gauss = from.numpy_has_gauss;
      *numpy_gauss = from.numpy_gauss;
    }
    if (torch_fields != nullptr && covers(generators, kTorch)) {
      std::lock_guard<std::mutex> hold(*torch_mutex);
      std::memcpy(torch_fields, &from.torch_fields, sizeof(from.torch_fields));
    }
  }
};

}  // namespace resumable_loader
