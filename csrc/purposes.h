// The Philox purposes: the last counter word of every draw, so that no two uses of the seed ever
// share a stream. The one definition: bindings.cpp exports them as _core.PURPOSES, from which
// resumable_loader.order.philox.Purpose is built. A value, once released, never changes meaning.
#pragma once

#include <cstdint>

namespace resumable_loader {

enum Purpose : uint32_t {
  PURPOSE_PERMUTATION = 1,     // Feistel round keys of an epoch's sample permutation
  PURPOSE_SAMPLE = 2,          // a sample's key (augmentations)
  PURPOSE_BATCH = 3,           // a batch's key (collate_fn)
  PURPOSE_SHARD_ORDER = 4,     // the shard permutation of shard-local mode
  PURPOSE_SHUFFLE_BUFFER = 5,  // shard-local mode's block shuffles (once its buffer's picks)
  PURPOSE_MIXTURE_SOURCE = 6,  // a mixture source's own stream seed (seed, source name)
  PURPOSE_DOCUMENT_ORDER = 7,  // a token dataset's per-epoch document shuffle
  PURPOSE_WORKER_SEED = 8,     // the base seed torch gives an iteration's workers
  PURPOSE_PROCESS_RNG = 9,     // a rank's process generators, re-derived on a flexible resume
  PURPOSE_SUBSTITUTE = 10,     // the stand-in for a sample that failed to load (bad samples)
};

// Name -> value, in order; the names as Python's Purpose members spell them.
struct PurposeName {
  const char* name;
  Purpose value;
};
inline constexpr PurposeName PURPOSE_NAMES[] = {
    {"PERMUTATION", PURPOSE_PERMUTATION},         {"SAMPLE", PURPOSE_SAMPLE},
    {"BATCH", PURPOSE_BATCH},                     {"SHARD_ORDER", PURPOSE_SHARD_ORDER},
    {"SHUFFLE_BUFFER", PURPOSE_SHUFFLE_BUFFER},   {"MIXTURE_SOURCE", PURPOSE_MIXTURE_SOURCE},
    {"DOCUMENT_ORDER", PURPOSE_DOCUMENT_ORDER}, {"WORKER_SEED", PURPOSE_WORKER_SEED},
    {"PROCESS_RNG", PURPOSE_PROCESS_RNG},         {"SUBSTITUTE", PURPOSE_SUBSTITUTE},
};

}  // namespace resumable_loader
