// The seek table of a token dataset's shuffled document order, for random access to windows.
//
// Contract: given an epoch's document order (a FeistelPermutation of the n documents, keyed by
// the seed and the epoch under Purpose DOCUMENT_ORDER) and the documents' token offsets
// (offsets[d] .. offsets[d + 1] are document d's tokens, n + 1 non-decreasing values),
// build_seek_table writes starts[j] = the number of tokens of the documents at slots 0 .. j-1 of
// that order, for j in [0, n]: the offset in the epoch's shuffled stream where the document at
// slot j begins (starts[n] is the total token count). A window [a, b) of the shuffled stream is
// then found by binary search in starts, and its documents are order(j) for the slots found, so
// a window at any position costs the same once the table exists. O(n) time, n + 1 words.
#pragma once

#include <cstdint>

#include "permutation.h"

namespace resumable_loader {

// requires order.size() == n, offsets[0 .. n] non-decreasing, starts has n + 1 slots.
void build_seek_table(const FeistelPermutation& order, const int64_t* offsets, int64_t* starts);

}  // namespace resumable_loader
