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

}  // namespace resumable_loader
