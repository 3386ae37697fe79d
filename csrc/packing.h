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

// A batch of packs' token rows from spans of a token array: piece k is tokens[first[k] ..
// first[k] + sizes[k]), and the pieces are written back to back into ids (the tokens as
// int64), labels (the tokens, -100 at each piece's first token) and positions (0, 1, .. in
// each piece). requires every span inside tokens and the outputs sum(sizes) long.
template <typename Token>
void gather_rows(const Token* tokens, const int64_t* first, const int64_t* sizes,
                 uint64_t pieces, int64_t* ids, int64_t* labels, int64_t* positions);

}  // namespace resumable_loader
