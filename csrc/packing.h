// Pack counts of consecutive windows of an epoch's sample order: the count-only twin of
// resumable_loader/packing/plan.py, for the per-epoch prefix table of packs.
//
// Contract: ids[0 .. n) are the sample ids at n consecutive positions of an epoch's order,
// starting at a window boundary, and lengths[id] (>= 0) each sample's length; window k is
// positions [k * window, min((k + 1) * window, n)). Each sample is cut into pieces of at most
// `capacity` (split: ceil(L / capacity) pieces, the last one shorter, one empty piece for
// L = 0; otherwise one piece of min(L, capacity)), and counts[k] receives the number of bins
// the strategy makes of window k's pieces: best-fit decreasing, first-fit decreasing, next-fit
// in order, or groups of the decreasing pieces whose count x longest fits (padded token
// budgets). A bin count depends only on the multiset of free rooms, never on which of two
// equal rooms takes a piece, so it equals the number of packs plan.py makes.
// O(n log window) time; counts has ceil(n / window) slots; ids are in [0, number of lengths).
#pragma once

#include <cstdint>

namespace resumable_loader {

enum class PackStrategy : int { kBestFit = 0, kFirstFit = 1, kNextFit = 2, kPad = 3 };

// requires window >= 1, capacity >= 1, every lengths[ids[i]] >= 0.
void window_pack_counts(const int32_t* lengths, const int64_t* ids, uint64_t n, uint64_t window,
                        int64_t capacity, PackStrategy strategy, bool split, int64_t* counts);

// The plan behind one window's count: bins[i] receives the bin of piece i (sizes[i] tokens,
// pieces in order of position), bins numbered in order of opening. Decreasing strategies take
// the pieces longest first, equal sizes in order of position; best fit puts a piece into the
// fullest bin it fits (of equally full ones, the first opened), first fit into the first opened
// bin it fits; a padded group takes the decreasing pieces while count x longest fits. This is
// the assignment plan.py orders its packs by, so it is part of every packed run's stream.
// requires capacity >= 1 and 0 <= sizes[i] <= capacity.
void window_pack_bins(const int64_t* sizes, uint64_t n, int64_t capacity, PackStrategy strategy,
                      int64_t* bins);

// The plan of one window: window_pack_bins's bins, ordered by their first piece, each bin's
// pieces in order of position. order[j] receives the piece at place j of that order, and
// bounds[b] .. bounds[b + 1] are the places of bin b (the b-th by first piece); returns the
// number of bins. O(n) beyond window_pack_bins.
// requires as window_pack_bins, and bounds of n + 1 slots.
int64_t window_pack_plan(const int64_t* sizes, uint64_t n, int64_t capacity,
                         PackStrategy strategy, int64_t* order, int64_t* bounds);

// The pieces of a batch of packs, in pack order: each piece's sample id, position in the
// epoch's sample order, offset (its first token within the sample) and size; pack p is pieces
// [bounds[p] - bounds[0], bounds[p + 1] - bounds[0]) of the count given.
struct PackPieces {
  const int64_t* ids;
  const int64_t* positions;
  const int64_t* offsets;
  const int64_t* sizes;
  uint64_t count;
  const int64_t* bounds;  // packs + 1
  uint64_t packs;
};

// A batch of packs written into one int64 buffer, from spans of a token array: piece k is
// tokens[first[k] .. first[k] + sizes[k]). With T = sum(sizes) and P pieces, out receives, back
// to back: the pieces' tokens as int64 (input_ids, T), the same with -100 at each piece's first
// token (labels, T), 0, 1, .. in each piece (position_ids, T), the pieces' sample ids, positions
// and offsets (P each), the packs' bounds from 0 (packs + 1), then cu_seqlens as int32 (0 and
// each piece's end, P + 1 of them, in the last (P + 2) / 2 words). Returns the longest piece.
// requires every span inside tokens, T = sum(sizes) < 2**31 and out of
// 3T + 3P + packs + 1 + (P + 2) / 2 words.
template <typename Token>
int64_t fill_pack_batch(const Token* tokens, const int64_t* first, const PackPieces& pieces,
                        int64_t total, int64_t* out);

// Token arrays of one dtype, back to back: array s holds the tokens [starts[s], starts[s + 1])
// of their concatenation (a token file's shards).
template <typename Token>
struct TokenArrays {
  const Token* const* data;
  const int64_t* starts;  // count + 1
  uint64_t count;
};

// The same for documents of token arrays, document d being tokens [starts[d], starts[d + 1])
// of their concatenation, inside one array: piece k is its tokens from offsets[k] on, sizes[k]
// of them, so that a run of a window plan's packs is written by one call, from the plan's own
// arrays (a binary search over the arrays per piece).
// requires every piece inside its document and every document inside one array, and the rest
// as fill_pack_batch.
template <typename Token>
int64_t fill_document_packs(const TokenArrays<Token>& tokens, const int64_t* starts,
                            const PackPieces& pieces, int64_t total, int64_t* out);

}  // namespace resumable_loader
