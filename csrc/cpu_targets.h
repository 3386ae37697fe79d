// The x86-64 instruction sets the core's kernels are compiled for besides the baseline, and the
// run-time checks that pick them: kernels are chosen when they run rather than with -march, so
// that a wheel runs on any x86-64. One definition for permutation.cc and global_rngs.cc.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define RL_HAS_X86_KERNELS 1
#define RL_TARGET_AVX2 __attribute__((target("avx2,popcnt")))
// prefer-vector-width: some tunings otherwise stop the AVX-512 kernels' loops at 256-bit vectors.
#define RL_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,popcnt,prefer-vector-width=512")))

namespace resumable_loader {

inline bool cpu_runs_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}
inline bool cpu_runs_avx512() {
  return cpu_runs_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq");
}

}  // namespace resumable_loader
#endif
