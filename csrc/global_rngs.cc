// The global generators' states (see global_rngs.h for the contract). Filling 624 state words
// from a seed is most of a reseed's cost, done three times per sample: x86-64 builds carry an
// AVX-512 version of it (its 64-bit multiplies vectorise 8 lanes wide; AVX2 has no 64-bit
// multiply and measured no faster than the baseline), picked at run time. Both compute the same
// words.
#include "global_rngs.h"

#include <cstring>

#include "cpu_targets.h"

namespace resumable_loader {
namespace {

constexpr uint64_t kSplitMixGamma = 0x9E3779B97F4A7C15ull;

inline uint64_t splitmix_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Output i of SplitMix64 started at `seed` fills words 2i (low half) and 2i + 1 (high half).
// The counter steps by addition and 32-bit words take each output as one 64-bit store (on a
// little-endian machine its two halves in that order): the vectorised loop then needs no
// multiply for the counter and no shuffle of halves, a third of the work.
template <typename Word>
inline void splitmix_words(uint64_t seed, Word* out) {
  uint64_t counter = seed;
  for (int i = 0; i < MT19937_N / 2; ++i) {
    counter += kSplitMixGamma;
    const uint64_t z = splitmix_mix(counter);
    if constexpr (sizeof(Word) == 4 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
      std::memcpy(out + 2 * i, &z, sizeof(z));
    } else {
      out[2 * i] = static_cast<uint32_t>(z);
      out[2 * i + 1] = static_cast<uint32_t>(z >> 32);
    }
  }
}

template <typename Word>
void words_portable(uint64_t seed, Word* out) {
  splitmix_words(seed, out);
}

#ifdef RL_HAS_X86_KERNELS
template <typename Word>
RL_TARGET_AVX512 void words_avx512(uint64_t seed, Word* out) {
  splitmix_words(seed, out);
}
#endif

template <typename Word>
using WordsKernel = void (*)(uint64_t, Word*);

template <typename Word>
WordsKernel<Word> fastest_words_kernel() {
#ifdef RL_HAS_X86_KERNELS
  if (cpu_runs_avx512()) return words_avx512<Word>;
#endif
  return words_portable<Word>;
}

const WordsKernel<uint32_t> words32 = fastest_words_kernel<uint32_t>();
const WordsKernel<uint64_t> words64 = fastest_words_kernel<uint64_t>();

}  // namespace

bool mt19937_state_words_with(const char* kernel, const uint32_t key[4], GlobalRng generator,
                              uint32_t out[MT19937_N]) {
  WordsKernel<uint32_t> chosen = nullptr;
  if (std::strcmp(kernel, "portable") == 0) chosen = words_portable<uint32_t>;
#ifdef RL_HAS_X86_KERNELS
  if (std::strcmp(kernel, "avx512") == 0 && cpu_runs_avx512()) chosen = words_avx512<uint32_t>;
#endif
  if (chosen == nullptr) return false;
  chosen(global_rng_seed(key, generator), out);
  return true;
}

void mt19937_state_words(const uint32_t key[4], GlobalRng generator, uint32_t out[MT19937_N]) {
  words32(global_rng_seed(key, generator), out);
}

void mt19937_state_words(const uint32_t key[4], GlobalRng generator, uint64_t out[MT19937_N]) {
  words64(global_rng_seed(key, generator), out);
}

void GlobalRngTargets::reseed_python(const uint32_t key[4]) const {
  if (python_state == nullptr) return;
  mt19937_state_words(key, kPython, python_state);
  *python_index = 0;
}

void GlobalRngTargets::reseed_numpy(const uint32_t key[4]) const {
  if (numpy_key == nullptr) return;
  mt19937_state_words(key, kNumpy, numpy_key);
  *numpy_pos = 0;
  *numpy_has_gauss = 0;
  *numpy_gauss = 0.0;
}

void GlobalRngTargets::reseed_torch(const uint32_t key[4]) const {
  if (torch_fields != nullptr) {
    // What torch's set_state makes of the legacy state reseed_torch writes below.
    std::lock_guard<std::mutex> hold(*torch_mutex);
    TorchMt19937Data& engine = torch_fields->engine;
    mt19937_state_words(key, kTorch, engine.state);
    engine.seed = global_rng_seed(key, kTorch) & TORCH_SEED_MASK;
    engine.left = MT19937_N;
    engine.seeded = true;
    engine.next = 0;
    torch_fields->next_float_normal_engaged = false;
    torch_fields->next_double_normal_engaged = false;
    return;
  }
  if (torch_state == nullptr) return;
  TorchCpuGeneratorStateLegacy& pod = torch_state->legacy_pod;
  mt19937_state_words(key, kTorch, pod.state);
  pod.the_initial_seed = global_rng_seed(key, kTorch) & TORCH_SEED_MASK;
  pod.left = MT19937_N;  // torch twists when a draw brings `left` to 0
  pod.seeded = 1;
  pod.next = 0;
  pod.normal_x = pod.normal_y = pod.normal_rho = 0.0;
  pod.normal_is_valid = 0;
  torch_state->next_float_normal_sample = 0.0f;
  torch_state->is_next_float_normal_sample_valid = false;
}

void GlobalRngTargets::snapshot_of(const uint32_t key[4], GlobalRngSnapshot& to) {
  to = GlobalRngSnapshot{};
  mt19937_state_words(key, kPython, to.python_state);
  mt19937_state_words(key, kNumpy, to.numpy_key);
  TorchMt19937Data& engine = to.torch_fields.engine;  // as reseed_torch writes it in place
  mt19937_state_words(key, kTorch, engine.state);
  engine.seed = global_rng_seed(key, kTorch) & TORCH_SEED_MASK;
  engine.left = MT19937_N;
  engine.seeded = true;
}

uint32_t GlobalRngTargets::differs(const GlobalRngSnapshot& from, uint32_t generators) const {
  uint32_t changed = 0;
  if (python_state != nullptr && covers(generators, kPython) &&
      (*python_index != from.python_index ||
       std::memcmp(python_state, from.python_state, sizeof(from.python_state)) != 0)) {
    changed |= 1u << kPython;
  }
  if (numpy_key != nullptr && covers(generators, kNumpy) &&
      (*numpy_pos != from.numpy_pos || *numpy_has_gauss != from.numpy_has_gauss ||
       std::memcmp(numpy_gauss, &from.numpy_gauss, sizeof(double)) != 0 ||
       std::memcmp(numpy_key, from.numpy_key, sizeof(from.numpy_key)) != 0)) {
    changed |= 1u << kNumpy;
  }
  if (torch_fields != nullptr && covers(generators, kTorch)) {
    std::lock_guard<std::mutex> hold(*torch_mutex);
    const TorchMt19937Data &now = torch_fields->engine, &was = from.torch_fields.engine;
    // Field by field: the padding, and an empty optional's value, hold no state.
    const bool same =
        now.seed == was.seed && now.left == was.left && now.seeded == was.seeded &&
        now.next == was.next &&
        torch_fields->next_float_normal_engaged == from.torch_fields.next_float_normal_engaged &&
        torch_fields->next_double_normal_engaged ==
            from.torch_fields.next_double_normal_engaged &&
        (!from.torch_fields.next_float_normal_engaged ||
         torch_fields->next_float_normal == from.torch_fields.next_float_normal) &&
        (!from.torch_fields.next_double_normal_engaged ||
         torch_fields->next_double_normal == from.torch_fields.next_double_normal) &&
        std::memcmp(now.state, was.state, sizeof(was.state)) == 0;
    if (!same) changed |= 1u << kTorch;
  }
  return changed;
}

}  // namespace resumable_loader
