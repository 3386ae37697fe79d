// The private extension module resumable_loader._core: the only file that includes nanobind.
// Checks arguments (ValueError), releases the GIL in bulk calls, refuses to convert output
// arrays (a silently converted copy would stay unfilled). resumable_loader/_core.pyi is generated
// from it: python -m nanobind.stubgen -m resumable_loader._core -o resumable_loader/_core.pyi,
// then ruff format.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "document_order.h"
#include "global_rngs.h"
#include "packing.h"
#include "permutation.h"
#include "philox.h"
#include "purposes.h"
#include "shard_blocks.h"

namespace nb = nanobind;
using namespace nb::literals;
using resumable_loader::FeistelPermutation;
using resumable_loader::covers;
using resumable_loader::GlobalRngTargets;
using resumable_loader::ShardBlockOrder;

namespace {

using Words4 = std::array<uint32_t, 4>;
using Int64Out = nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

using Int64In = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
constexpr uint64_t kMaxLength = uint64_t{1} << 63;

Words4 to_words(const resumable_loader::philox4x32_ctr_t& c) {
  return {c.v[0], c.v[1], c.v[2], c.v[3]};
}

// Python gets the words as a tuple, as rng.py promises.
using WordsTuple = std::tuple<uint32_t, uint32_t, uint32_t, uint32_t>;
WordsTuple to_tuple(const Words4& w) { return {w[0], w[1], w[2], w[3]}; }

// Philox4x32-10 of counter (position lo, position hi, epoch, purpose) under key (seed lo, hi).
Words4 derive(uint64_t seed, uint32_t epoch, uint64_t position, uint32_t purpose) {
  const resumable_loader::philox4x32_ctr_t ctr = {
      {static_cast<uint32_t>(position), static_cast<uint32_t>(position >> 32), epoch, purpose}};
  const resumable_loader::philox4x32_key_t key = {
      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  return to_words(resumable_loader::philox4x32(ctr, key));
}

constexpr int kRoundKeys = 2 * resumable_loader::FEISTEL_MAX_ROUNDS;

// The permutation's round keys: Philox blocks 0, 1, ... of (seed, epoch, purpose).
std::array<uint32_t, kRoundKeys> round_keys(uint64_t seed, uint32_t epoch, uint32_t purpose) {
  std::array<uint32_t, kRoundKeys> keys{};
  for (int block = 0; block * 4 < kRoundKeys; ++block) {
    const Words4 words = derive(seed, epoch, static_cast<uint64_t>(block), purpose);
    for (int w = 0; w < 4 && block * 4 + w < kRoundKeys; ++w) keys[block * 4 + w] = words[w];
  }
  return keys;
}

FeistelPermutation make_permutation(uint64_t n, uint64_t seed, uint32_t epoch, uint32_t purpose) {
  if (n == 0 || n > kMaxLength) {
    throw nb::value_error(("permutation length must be in [1, 2**63], got " +
                           std::to_string(n)).c_str());
  }
  return FeistelPermutation(n, round_keys(seed, epoch, purpose).data());
}

resumable_loader::GlobalRng to_generator(uint32_t generator) {
  if (generator > resumable_loader::kTorch) {
    throw nb::value_error("generator must be 0 (Python), 1 (numpy) or 2 (torch)");
  }
  return static_cast<resumable_loader::GlobalRng>(generator);
}

void check_position(const FeistelPermutation& p, uint64_t position, const char* what) {
  if (position >= p.size()) {
    throw nb::index_error((std::string(what) + " " + std::to_string(position) +
                           " out of range for a permutation of length " +
                           std::to_string(p.size())).c_str());
  }
}

void check_range(const FeistelPermutation& p, uint64_t start, uint64_t count) {
  if (start > p.size() || count > p.size() - start) {
    throw nb::index_error(("positions [" + std::to_string(start) + ", " +
                           std::to_string(start + count) +
                           ") out of range for a permutation of length " +
                           std::to_string(p.size())).c_str());
  }
}

// The bulk fill's kernels by name, fastest last.
using resumable_loader::FillKernel;
const std::pair<const char*, FillKernel> kFillKernels[] = {
    {"portable", FillKernel::kPortable},
    {"avx2", FillKernel::kAvx2},
    {"avx512", FillKernel::kAvx512},
};

// The per-sample reseed in one call (resumable_loader/rngs/process.py): the sample's key and
// the states of the global generators asked for together, with the Python-side steps each
// needs: numpy's own lock around its writes (numpy draws large arrays without the GIL, under
// that lock), Python's cached Gaussian cleared, torch's state installed through its set_state
// unless the targets write torch's generator in place. Also the per-batch side of
// reseed_globals="auto" (rngs/idle.py): an entry state for the generators not reseeded per
// sample, and which of them the batch changed.
struct SampleReseeder {
  GlobalRngTargets targets;
  // numpy's RandomState keeps a copy of its bit generator's interface, whose first word is the
  // state address while the bit generator is the one `targets` writes; set_bit_generator
  // replaces the copy, and the reseed then writes nothing and reports it.
  const uintptr_t* numpy_interface;
  nb::object lock_acquire, lock_release, python, torch_set_state, torch_buffer;
  nb::str gauss_next{"gauss_next"};
  // The entry state of (entry_seed, entry_epoch), once one was asked for.
  resumable_loader::GlobalRngSnapshot entry{};
  bool have_entry = false;
  uint64_t entry_seed = 0;
  uint32_t entry_epoch = 0;

  bool numpy_current() const {
    return *numpy_interface == reinterpret_cast<uintptr_t>(targets.numpy_key);
  }

  bool operator()(uint64_t seed, uint32_t epoch, uint64_t position, nb::handle purpose,
                  uint32_t generators) {
    uint32_t purpose_word;
    if (!nb::try_cast(purpose, purpose_word)) {
      throw nb::type_error("purpose must be an int in [0, 2**32)");
    }
    if (!numpy_current()) return false;
    const Words4 key = derive(seed, epoch, position, purpose_word);
    if (covers(generators, resumable_loader::kPython)) {
      targets.reseed_python(key.data());
      nb::setattr(python, gauss_next, nb::none());
    }
    if (covers(generators, resumable_loader::kNumpy)) {
      lock_acquire();
      targets.reseed_numpy(key.data());
      lock_release();
    }
    if (covers(generators, resumable_loader::kTorch)) {
      targets.reseed_torch(key.data());
      if (targets.torch_fields == nullptr) torch_set_state(torch_buffer);
    }
    return true;
  }

  // Give `generators` the entry state of (seed, epoch): the state a sample at a position no
  // order reaches (2**64 - 1; lengths are at most 2**63) would get. False, writing nothing,
  // if numpy's bit generator was replaced.
  bool enter(uint64_t seed, uint32_t epoch, uint32_t generators) {
    if (!numpy_current()) return false;
    if (!have_entry || seed != entry_seed || epoch != entry_epoch) {
      const Words4 key = derive(seed, epoch, ~uint64_t{0}, resumable_loader::PURPOSE_SAMPLE);
      GlobalRngTargets::snapshot_of(key.data(), entry);
      have_entry = true;
      entry_seed = seed;
      entry_epoch = epoch;
    }
    const uint32_t numpy = generators & (1u << resumable_loader::kNumpy);
    targets.restore(entry, generators & ~numpy);
    if (covers(generators, resumable_loader::kPython)) {
      nb::setattr(python, gauss_next, nb::none());
    }
    if (numpy != 0) {
      lock_acquire();
      targets.restore(entry, numpy);
      lock_release();
    }
    return true;
  }

  // Which of `generators` left the entry state enter() gave them (all of them before any
  // enter(); numpy's as well once its bit generator was replaced).
  uint32_t changed(uint32_t generators) {
    if (!have_entry) return generators;
    uint32_t moved = targets.differs(entry, generators);
    if (covers(generators, resumable_loader::kPython) && !python.attr(gauss_next).is_none()) {
      moved |= 1u << resumable_loader::kPython;
    }
    if (covers(generators, resumable_loader::kNumpy) && !numpy_current()) {
      moved |= 1u << resumable_loader::kNumpy;
    }
    return moved;
  }
};

// A window's piece sizes (in [0, capacity], capacity in [1, 2**31)) and a strategy (0-3), with
// an output of the slots expected.
void check_window_sizes(const Int64In& sizes, int64_t capacity, int strategy, size_t slots,
                        size_t expected) {
  const int64_t* size = sizes.data();
  const uint64_t n = sizes.shape(0);
  if (capacity < 1 || capacity >= (int64_t{1} << 31) || strategy < 0 || strategy > 3 ||
      slots != expected ||
      std::any_of(size, size + n, [capacity](int64_t s) { return s < 0 || s > capacity; })) {
    throw nb::value_error(("a window plan needs capacity in [1, 2**31), strategy in [0, 3], "
                           "sizes in [0, capacity] and " + std::to_string(expected) +
                           " output slots, got " + std::to_string(slots)).c_str());
  }
}

// A token array of any integer dtype, for the packing kernels (packing.h).
using TokensIn = nb::ndarray<nb::ro, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Calls fill(Token{}) with the integer type of the tokens' dtype (TypeError for others).
template <typename Fill>
int64_t with_token_type(nb::dlpack::dtype type, Fill fill) {
  if (type == nb::dtype<uint8_t>()) return fill(uint8_t{});
  if (type == nb::dtype<int8_t>()) return fill(int8_t{});
  if (type == nb::dtype<uint16_t>()) return fill(uint16_t{});
  if (type == nb::dtype<int16_t>()) return fill(int16_t{});
  if (type == nb::dtype<uint32_t>()) return fill(uint32_t{});
  if (type == nb::dtype<int32_t>()) return fill(int32_t{});
  if (type == nb::dtype<uint64_t>()) return fill(uint64_t{});
  if (type == nb::dtype<int64_t>()) return fill(int64_t{});
  throw nb::type_error("the tokens must be an array of integers of 8 to 64 bits");
}

// Token arrays of one integer dtype, back to back (packing.h: TokenArrays), referenced for as
// long as this lives: a token file's shards, for fill_document_packs.
struct TokenShards {
  std::vector<TokensIn> arrays;
  std::vector<int64_t> starts{0};  // arrays + 1
};

// The pieces' per-piece columns from index first on, and packs + 1 bounds from bounds[0]:
// checked to be one run of pieces [bounds[0], bounds[packs]) inside the columns, of sizes
// >= 0 summing below 2**31. Returns the pieces and their token count.
std::pair<resumable_loader::PackPieces, int64_t> pack_pieces(
    const Int64In& ids, const Int64In& positions, const Int64In& offsets, const Int64In& sizes,
    const int64_t* bounds, uint64_t packs) {
  const uint64_t n = ids.shape(0);
  bool valid = positions.shape(0) == n && offsets.shape(0) == n && sizes.shape(0) == n &&
               bounds[0] >= 0 && static_cast<uint64_t>(bounds[packs]) <= n;
  for (uint64_t p = 0; valid && p < packs; ++p) valid = bounds[p] <= bounds[p + 1];
  int64_t total = 0;
  for (int64_t k = valid ? bounds[0] : 0; valid && k < bounds[packs]; ++k) {
    const int64_t size = sizes.data()[k];
    valid = size >= 0 && offsets.data()[k] >= 0 && size < (int64_t{1} << 31) - total;
    total += size;
  }
  if (!valid) {
    throw nb::value_error("packing needs one id, position, offset and size per piece, "
                          "non-decreasing pack bounds inside them, offsets and sizes >= 0 and "
                          "fewer than 2**31 tokens");
  }
  const uint64_t from = static_cast<uint64_t>(bounds[0]);
  return {{ids.data() + from, positions.data() + from, offsets.data() + from,
           sizes.data() + from, static_cast<uint64_t>(bounds[packs]) - from, bounds, packs},
          total};
}

// The buffer's words for a batch (packing.h), checked.
void check_pack_buffer(const Int64Out& out, const resumable_loader::PackPieces& pieces,
                       int64_t total) {
  const uint64_t n = static_cast<uint64_t>(total), count = pieces.count;
  if (out.shape(0) != 3 * n + 3 * count + pieces.packs + 1 + (count + 2) / 2) {
    throw nb::value_error(("the pack buffer needs 3T + 3P + packs + 1 + (P + 2) / 2 = " +
                           std::to_string(3 * n + 3 * count + pieces.packs + 1 +
                                          (count + 2) / 2) +
                           " words (packing.h), got " + std::to_string(out.shape(0)))
                              .c_str());
  }
}

void bind_packing(nb::module_& m) {
  m.def(
      "fill_pack_batch",
      [](TokensIn tokens, Int64In first, Int64In sizes, Int64In ids, Int64In positions,
         Int64In offsets, Int64In bounds, Int64Out out) {
        if (bounds.shape(0) < 1 || first.shape(0) != ids.shape(0)) {
          throw nb::value_error("fill_pack_batch needs packs + 1 >= 1 bounds and a first per "
                                "piece");
        }
        const auto [pieces, total] =
            pack_pieces(ids, positions, offsets, sizes, bounds.data(), bounds.shape(0) - 1);
        if (bounds.data()[0] != 0 || pieces.count != ids.shape(0)) {
          throw nb::value_error("fill_pack_batch's bounds run from 0 to the pieces' count");
        }
        const int64_t count = static_cast<int64_t>(tokens.shape(0));
        for (uint64_t k = 0; k < pieces.count; ++k) {
          const int64_t at = first.data()[k];
          if (at < 0 || pieces.sizes[k] > count - at) {
            throw nb::value_error(("fill_pack_batch: piece " + std::to_string(k) +
                                   "'s span is outside the tokens").c_str());
          }
        }
        check_pack_buffer(out, pieces, total);
        return with_token_type(tokens.dtype(), [&](auto token) {
          using Token = decltype(token);
          nb::gil_scoped_release release;
          return resumable_loader::fill_pack_batch(static_cast<const Token*>(tokens.data()),
                                                   first.data(), pieces, total, out.data());
        });
      },
      "tokens"_a, "first"_a, "sizes"_a, "ids"_a, "positions"_a, "offsets"_a, "bounds"_a,
      "out"_a.noconvert(),
      "Fill out with a batch of packs (packing.h: input_ids, labels, position_ids, provenance, "
      "bounds, cu_seqlens as int32); returns the longest piece.");
  nb::class_<TokenShards>(m, "TokenShards",
                          "Token arrays of one integer dtype, back to back (a token file's "
                          "shards), referenced for fill_document_packs.")
      .def(
          "__init__",
          [](TokenShards* self, std::vector<TokensIn> arrays) {
            if (arrays.empty()) throw nb::value_error("TokenShards needs one array or more");
            new (self) TokenShards();
            for (const TokensIn& array : arrays) {
              if (array.dtype() != arrays[0].dtype()) {
                throw nb::type_error("TokenShards' arrays must have one dtype");
              }
              self->starts.push_back(self->starts.back() + static_cast<int64_t>(array.shape(0)));
            }
            with_token_type(arrays[0].dtype(), [](auto) { return int64_t{0}; });  // an integer
            self->arrays = std::move(arrays);
          },
          "arrays"_a)
      .def_prop_ro("tokens", [](const TokenShards& shards) { return shards.starts.back(); });
  m.def(
      "fill_document_packs",
      [](const TokenShards& shards, Int64In starts, Int64In ids, Int64In positions,
         Int64In offsets, Int64In sizes, Int64In bounds, uint64_t first_pack, uint64_t packs,
         Int64Out out) {
        if (first_pack >= bounds.shape(0) || packs > bounds.shape(0) - 1 - first_pack ||
            starts.shape(0) < 1) {
          throw nb::value_error(("fill_document_packs: packs [" + std::to_string(first_pack) +
                                 ", " + std::to_string(first_pack + packs) + ") outside the " +
                                 std::to_string(bounds.shape(0)) + " bounds, or no starts")
                                    .c_str());
        }
        const auto [pieces, total] =
            pack_pieces(ids, positions, offsets, sizes, bounds.data() + first_pack, packs);
        const uint64_t documents = starts.shape(0) - 1;
        const int64_t* doc = starts.data();
        const std::vector<int64_t>& array = shards.starts;
        for (uint64_t k = 0; k < pieces.count; ++k) {
          const int64_t id = pieces.ids[k];
          bool inside = id >= 0 && static_cast<uint64_t>(id) < documents && doc[id] >= 0 &&
                        doc[id] <= doc[id + 1] && doc[id + 1] <= array.back() &&
                        pieces.offsets[k] + pieces.sizes[k] <= doc[id + 1] - doc[id];
          if (inside) {  // and inside the array it starts in (as the kernel finds it)
            const auto s = std::upper_bound(array.begin() + 1, array.end() - 1, doc[id]);
            inside = doc[id + 1] <= *s;
          }
          if (!inside) {
            throw nb::value_error(("fill_document_packs: piece " + std::to_string(k) +
                                   " (document " + std::to_string(id) +
                                   ") is outside its document or its token array").c_str());
          }
        }
        check_pack_buffer(out, pieces, total);
        return with_token_type(shards.arrays[0].dtype(), [&](auto token) {
          using Token = decltype(token);
          std::vector<const Token*> data;
          for (const TokensIn& a : shards.arrays) data.push_back(static_cast<const Token*>(a.data()));
          const resumable_loader::TokenArrays<Token> arrays{data.data(), array.data(),
                                                            shards.arrays.size()};
          nb::gil_scoped_release release;
          return resumable_loader::fill_document_packs(arrays, doc, pieces, total, out.data());
        });
      },
      "shards"_a, "starts"_a, "ids"_a, "positions"_a, "offsets"_a, "sizes"_a, "bounds"_a,
      "first_pack"_a, "packs"_a, "out"_a.noconvert(),
      "Fill out as fill_pack_batch does with packs [first_pack, first_pack + packs) of a plan's "
      "pieces (bounds: the plan's), document d being tokens [starts[d], starts[d + 1]) of the "
      "shards' concatenation.");
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "C++ core of resumable_loader: Philox4x32-10, Feistel permutation, reseeding.";
  // Objects still referenced at interpreter exit (e.g. by test parametrizations) are not leaks.
  nb::set_leak_warnings(false);

  m.def(
      "philox4x32",
      [](Words4 counter, std::array<uint32_t, 2> key, unsigned rounds) {
        if (rounds > resumable_loader::PHILOX4x32_MAX_ROUNDS) {
          throw nb::value_error("Philox4x32 rounds must be <= 16");
        }
        return to_tuple(to_words(resumable_loader::philox4x32_R(
            rounds, {{counter[0], counter[1], counter[2], counter[3]}}, {{key[0], key[1]}})));
      },
      "counter"_a, "key"_a, "rounds"_a = resumable_loader::PHILOX4x32_DEFAULT_ROUNDS,
      "Philox4x32-R of a 4-word counter under a 2-word key, as Random123 defines it.");

  // The per-sample hot path. Exact ints only (anything else raises TypeError and rng.py validates
  // it), except the purpose: an IntEnum converted by hand, since letting nanobind convert it
  // means a second overload pass (~100 ns).
  m.def(
      "derive_words",
      [](uint64_t seed, uint32_t epoch, uint64_t position, nb::handle purpose) {
        uint32_t purpose_word;
        if (!nb::try_cast(purpose, purpose_word)) {
          throw nb::type_error("purpose must be an int in [0, 2**32)");
        }
        return to_tuple(derive(seed, epoch, position, purpose_word));
      },
      "seed"_a.noconvert(), "epoch"_a.noconvert(), "position"_a.noconvert(), "purpose"_a,
      nb::sig("def derive_words(seed: int, epoch: int, position: int, purpose: int) -> "
              "tuple[int, int, int, int]"),
      "Philox4x32-10 of counter (position, epoch, purpose) under the seed's key.");

  // The global generators' reseed (global_rngs.h). Addresses come from global_rngs.py, which
  // checks each against its library's public API before it passes it here.
  m.def(
      "global_rng_seed",
      [](Words4 key, uint32_t generator) {
        return resumable_loader::global_rng_seed(key.data(), to_generator(generator));
      },
      "key"_a, "generator"_a, "The 64-bit seed of global generator 0, 1 or 2 for a sample key.");
  m.def(
      "mt19937_state_words",
      [](Words4 key, uint32_t generator) {
        std::array<uint32_t, resumable_loader::MT19937_N> words{};
        resumable_loader::mt19937_state_words(key.data(), to_generator(generator), words.data());
        return words;
      },
      "key"_a, "generator"_a, "The 624 MT19937 state words of global generator 0, 1 or 2.");
  m.def(
      "_mt19937_state_words_with",
      [](const std::string& kernel, Words4 key, uint32_t generator) {
        std::array<uint32_t, resumable_loader::MT19937_N> words{};
        if (!resumable_loader::mt19937_state_words_with(kernel.c_str(), key.data(),
                                                        to_generator(generator), words.data())) {
          throw nb::value_error(("no state-word kernel " + kernel + " on this CPU").c_str());
        }
        return words;
      },
      "kernel"_a, "key"_a, "generator"_a,
      "mt19937_state_words by the named kernel ('portable', 'avx512'; for tests).");
  nb::dict purposes;
  for (const auto& [name, value] : resumable_loader::PURPOSE_NAMES) {
    purposes[name] = static_cast<uint32_t>(value);
  }
  m.attr("PURPOSES") = purposes;
  m.attr("TORCH_SEED_MASK") = resumable_loader::TORCH_SEED_MASK;
  m.attr("TORCH_CPU_GENERATOR_STATE_SIZE") = resumable_loader::TORCH_CPU_GENERATOR_STATE_SIZE;
  m.attr("TORCH_CPU_GENERATOR_FIELDS_SIZE") =
      resumable_loader::TORCH_CPU_GENERATOR_FIELDS_SIZE;
  m.attr("STD_MUTEX_SIZE") = sizeof(std::mutex);
  m.attr("ALL_GLOBAL_RNGS") = resumable_loader::kAllGlobalRngs;

  nb::class_<resumable_loader::GlobalRngSnapshot>(m, "GlobalRngSnapshot");
  nb::class_<GlobalRngTargets>(m, "GlobalRngTargets")
      .def(
          "__init__",
          [](GlobalRngTargets* self, uintptr_t python_state, uintptr_t python_index,
             uintptr_t numpy_key, uintptr_t numpy_pos, uintptr_t numpy_has_gauss,
             uintptr_t numpy_gauss, uintptr_t torch_state, uintptr_t torch_fields,
             uintptr_t torch_mutex) {
            if ((python_state == 0) != (python_index == 0) ||
                (numpy_key == 0) != (numpy_pos == 0 || numpy_has_gauss == 0 ||
                                     numpy_gauss == 0) ||
                (torch_fields == 0) != (torch_mutex == 0)) {
              throw nb::value_error("a generator's addresses must all be given, or all be 0");
            }
            new (self) GlobalRngTargets{
                reinterpret_cast<uint32_t*>(python_state),
                reinterpret_cast<int*>(python_index),
                reinterpret_cast<uint32_t*>(numpy_key),
                reinterpret_cast<int*>(numpy_pos),
                reinterpret_cast<int*>(numpy_has_gauss),
                reinterpret_cast<double*>(numpy_gauss),
                reinterpret_cast<resumable_loader::TorchCpuGeneratorState*>(torch_state),
                reinterpret_cast<resumable_loader::TorchCpuGeneratorFields*>(torch_fields),
                reinterpret_cast<std::mutex*>(torch_mutex)};
          },
          "python_state"_a, "python_index"_a, "numpy_key"_a, "numpy_pos"_a,
          "numpy_has_gauss"_a, "numpy_gauss"_a, "torch_state"_a, "torch_fields"_a = 0,
          "torch_mutex"_a = 0)
      .def(
          "reseed", [](const GlobalRngTargets& t, Words4 key) { t.reseed(key.data()); }, "key"_a,
          "Write every target generator's state for a sample key.")
      .def(
          "save",
          [](const GlobalRngTargets& t) {
            resumable_loader::GlobalRngSnapshot snapshot;
            t.save(snapshot);
            return snapshot;
          },
          "Copy the states the targets cover (torch's where written in place).")
      .def(
          "restore",
          [](const GlobalRngTargets& t, const resumable_loader::GlobalRngSnapshot& snapshot) {
            t.restore(snapshot);
          },
          "snapshot"_a, "Put a save()d copy back.");

  nb::class_<SampleReseeder>(m, "SampleReseeder")
      .def(
          "__init__",
          [](SampleReseeder* self, const GlobalRngTargets& targets, uintptr_t numpy_interface,
             nb::object numpy_lock, nb::object python, nb::object torch_generator,
             nb::object torch_buffer) {
            if (targets.python_state == nullptr || targets.numpy_key == nullptr ||
                (targets.torch_state == nullptr && targets.torch_fields == nullptr) ||
                numpy_interface == 0) {
              throw nb::value_error("SampleReseeder needs all three generators' addresses");
            }
            new (self) SampleReseeder{targets,
                                      reinterpret_cast<const uintptr_t*>(numpy_interface),
                                      numpy_lock.attr("acquire"),
                                      numpy_lock.attr("release"),
                                      std::move(python),
                                      torch_generator.attr("set_state"),
                                      std::move(torch_buffer)};
          },
          "targets"_a, "numpy_interface"_a, "numpy_lock"_a, "python"_a, "torch_generator"_a,
          "torch_buffer"_a)
      .def("__call__", &SampleReseeder::operator(), "seed"_a.noconvert(), "epoch"_a.noconvert(),
           "position"_a.noconvert(), "purpose"_a, "generators"_a.noconvert(),
           nb::sig("def __call__(self, seed: int, epoch: int, position: int, purpose: int, "
                   "generators: int) -> bool"),
           "Reseed the generators in the set `generators` for a sample key (False: numpy's "
           "replaced).")
      .def("enter", &SampleReseeder::enter, "seed"_a, "epoch"_a, "generators"_a,
           "Give `generators` the entry state of (seed, epoch) (False: numpy's was replaced).")
      .def("changed", &SampleReseeder::changed, "generators"_a,
           "Which of `generators` left the entry state the last enter() gave them.");

  nb::class_<FeistelPermutation>(m, "Permutation")
      .def(
          "__init__",
          [](FeistelPermutation* self, uint64_t n, uint64_t seed, uint32_t epoch,
             uint32_t purpose) { new (self) FeistelPermutation(make_permutation(n, seed, epoch,
                                                                                purpose)); },
          "n"_a, "seed"_a, "epoch"_a, "purpose"_a = uint32_t{resumable_loader::PURPOSE_PERMUTATION})
      .def_prop_ro("size", &FeistelPermutation::size)
      .def_prop_ro("bits", &FeistelPermutation::bits)
      .def_prop_ro("rounds", &FeistelPermutation::rounds)
      // Lookups take exact ints only: order.py validates anything else (numpy ints, bools).
      .def(
          "__call__",
          [](const FeistelPermutation& p, uint64_t position) {
            check_position(p, position, "position");
            return p(position);
          },
          "position"_a.noconvert())
      .def(
          "inverse",
          [](const FeistelPermutation& p, uint64_t value) {
            check_position(p, value, "value");
            return p.inverse(value);
          },
          "value"_a.noconvert())
      .def(
          "fill",
          [](const FeistelPermutation& p, uint64_t start, Int64Out out) {
            check_range(p, start, out.shape(0));
            nb::gil_scoped_release release;
            p.fill(start, out.shape(0), out.data());
          },
          "start"_a, "out"_a.noconvert(),
          "Write perm(start + i) into out[i] for every i (out: contiguous int64).")
      .def(
          "_fill_with",
          [](const FeistelPermutation& p, const std::string& kernel, uint64_t start,
             Int64Out out) {
            for (const auto& [name, value] : kFillKernels) {
              if (kernel != name) continue;
              if (!resumable_loader::fill_kernel_supported(value)) break;
              check_range(p, start, out.shape(0));
              nb::gil_scoped_release release;
              p.fill_with(value, start, out.shape(0), out.data());
              return;
            }
            throw nb::value_error(("no fill kernel " + kernel + " on this CPU").c_str());
          },
          "kernel"_a, "start"_a, "out"_a.noconvert(),
          "fill() on this thread with the named kernel (for tests: see _fill_kernels()).");

  m.def(
      "_fill_kernels",
      [] {
        std::vector<std::string> names;
        for (const auto& [name, value] : kFillKernels) {
          if (resumable_loader::fill_kernel_supported(value)) names.emplace_back(name);
        }
        return names;
      },
      "Names of the bulk-fill kernels this CPU runs, fastest last; all give the same ids.");

  nb::class_<ShardBlockOrder>(m, "ShardBlockOrder")
      .def(
          "__init__",
          [](ShardBlockOrder* self, Int64In shard_sizes, uint64_t seed, uint32_t epoch,
             uint64_t window, uint64_t block) {
            if (window < 1 || block < 1 || block >= (uint64_t{1} << 32)) {
              throw nb::value_error("window must be >= 1 and block in [1, 2**32)");
            }
            const int64_t* sizes = shard_sizes.data();
            uint64_t total = 0;
            for (size_t s = 0; s < shard_sizes.shape(0); ++s) {
              // The order keeps int64 offsets, so the total stays below 2**63.
              if (sizes[s] < 0 || static_cast<uint64_t>(sizes[s]) > kMaxLength - 1 - total) {
                throw nb::value_error("shard sizes must be >= 0 and sum to less than 2**63");
              }
              total += static_cast<uint64_t>(sizes[s]);
            }
            const auto keys = round_keys(seed, epoch, resumable_loader::PURPOSE_SHARD_ORDER);
            new (self) ShardBlockOrder(sizes, shard_sizes.shape(0), seed, epoch, window, block,
                                       keys.data());
          },
          "shard_sizes"_a, "seed"_a, "epoch"_a, "window"_a, "block"_a)
      .def_prop_ro("size", &ShardBlockOrder::size)
      .def(
          "fill",
          [](const ShardBlockOrder& order, uint64_t start, Int64Out out) {
            if (start > order.size() || out.shape(0) > order.size() - start) {
              throw nb::index_error(("positions [" + std::to_string(start) + ", " +
                                     std::to_string(start + out.shape(0)) +
                                     ") out of range for an order of length " +
                                     std::to_string(order.size())).c_str());
            }
            nb::gil_scoped_release release;
            order.fill(start, out.shape(0), out.data());
          },
          "start"_a, "out"_a.noconvert(),
          "Write the id at position start + i into out[i] for every i (out: contiguous int64).")
      .def(
          "reader",
          [](const ShardBlockOrder& order, uint64_t start) {
            if (start > order.size()) {
              throw nb::index_error(("position " + std::to_string(start) +
                                     " out of range for an order of length " +
                                     std::to_string(order.size())).c_str());
            }
            return new ShardBlockOrder::Reader(order, start);
          },
          "start"_a, nb::keep_alive<0, 1>(), nb::rv_policy::take_ownership,
          "A reader of the ids from position start on, each block computed once.");
  nb::class_<ShardBlockOrder::Reader>(m, "ShardBlockReader")
      .def_prop_ro("remaining", &ShardBlockOrder::Reader::remaining)
      .def(
          "read",
          [](ShardBlockOrder::Reader& reader, Int64Out out) {
            nb::gil_scoped_release release;
            return reader.read(out.data(), out.shape(0));
          },
          "out"_a.noconvert(), "Write the next ids into out; returns how many were written.");

  // ---- Token datasets (resumable_loader/tokens/seek_table.py) --------------------------------
  // The seek table of an epoch's shuffled document order (document_order.h). The offsets were
  // validated by the caller (non-decreasing); ids stay in range whatever they hold.
  m.def(
      "build_seek_table",
      [](Int64In offsets, uint64_t seed, uint32_t epoch, Int64Out starts) {
        const size_t count = offsets.shape(0);
        if (count < 2 || starts.shape(0) != count) {
          throw nb::value_error(("build_seek_table needs documents + 1 >= 2 offsets and as many "
                                 "output slots, got " + std::to_string(count) + " and " +
                                 std::to_string(starts.shape(0))).c_str());
        }
        const FeistelPermutation order = make_permutation(
            count - 1, seed, epoch, resumable_loader::PURPOSE_DOCUMENT_ORDER);
        nb::gil_scoped_release release;
        resumable_loader::build_seek_table(order, offsets.data(), starts.data());
      },
      "offsets"_a, "seed"_a, "epoch"_a, "starts"_a.noconvert(),
      "starts[j] = tokens of the documents at slots 0..j-1 of (seed, epoch)'s document order.");

  // ---- Packing (resumable_loader/packing/prefix.py) ------------------------------------------
  // Bins per window of an epoch's positions (packing.h); the lengths were validated (>= 0).
  m.def(
      "window_pack_counts",
      [](nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> lengths,
         Int64In ids, uint64_t window, int64_t capacity, int strategy, bool split,
         Int64Out counts) {
        const uint64_t n = ids.shape(0);
        if (window < 1 || capacity < 1 || capacity >= (int64_t{1} << 31) || strategy < 0 ||
            strategy > 3 || counts.shape(0) != (n + window - 1) / window) {
          throw nb::value_error("window_pack_counts needs window >= 1, capacity in [1, 2**31), "
                                "strategy in [0, 3] and ceil(n / window) output slots");
        }
        const int64_t* id = ids.data();
        const int64_t size = static_cast<int64_t>(lengths.shape(0));
        if (std::any_of(id, id + n, [size](int64_t i) { return i < 0 || i >= size; })) {
          throw nb::value_error("window_pack_counts: an id is outside the lengths");
        }
        nb::gil_scoped_release release;
        resumable_loader::window_pack_counts(
            lengths.data(), id, n, window, capacity,
            static_cast<resumable_loader::PackStrategy>(strategy), split, counts.data());
      },
      "lengths"_a, "ids"_a, "window"_a, "capacity"_a, "strategy"_a, "split"_a,
      "counts"_a.noconvert(),
      "counts[k] = bins the strategy makes of window k of lengths[ids] (plan.py's pack count).");

  // One window's plan (packing.h): the bin of each piece, and the pieces in pack order; the
  // sizes were cut to the capacity.
  m.def(
      "window_pack_bins",
      [](Int64In sizes, int64_t capacity, int strategy, Int64Out bins) {
        check_window_sizes(sizes, capacity, strategy, bins.shape(0), sizes.shape(0));
        nb::gil_scoped_release release;
        resumable_loader::window_pack_bins(
            sizes.data(), sizes.shape(0), capacity,
            static_cast<resumable_loader::PackStrategy>(strategy), bins.data());
      },
      "sizes"_a, "capacity"_a, "strategy"_a, "bins"_a.noconvert(),
      "bins[i] = the bin of piece i in plan.py's assignment (numbered in order of opening).");
  m.def(
      "window_pack_plan",
      [](Int64In sizes, int64_t capacity, int strategy, Int64Out order, Int64Out bounds) {
        check_window_sizes(sizes, capacity, strategy, order.shape(0), sizes.shape(0));
        if (bounds.shape(0) != sizes.shape(0) + 1) {
          throw nb::value_error("window_pack_plan needs pieces + 1 bounds slots");
        }
        nb::gil_scoped_release release;
        return resumable_loader::window_pack_plan(
            sizes.data(), sizes.shape(0), capacity,
            static_cast<resumable_loader::PackStrategy>(strategy), order.data(), bounds.data());
      },
      "sizes"_a, "capacity"_a, "strategy"_a, "order"_a.noconvert(), "bounds"_a.noconvert(),
      "The pieces in pack order (order) and each pack's places in it (bounds[:packs + 1]); "
      "returns the packs.");
  bind_packing(m);
}
