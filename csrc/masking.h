// Random patch masking, the per-sample part shared by the CPU kernel (masking.cpp) and the CUDA
// kernel (masking_cuda.cu). Everything here is __host__ __device__, so the CPU tests run the very
// code the GPU runs.
//
// Selection (MAE's argsort of noise, made exact): patch j of a sample gets a 64-bit key whose
// high bits are Philox4x32-10 noise and whose low index_bits(N) bits are j itself. Keys are
// therefore unique, and the shuffle is the ascending key order: rank(j) = #{i : key_i < key_j}.
// The first K patches of the shuffle are kept. Every ordering of the patches, hence every K-subset,
// is equally likely up to ties in the random bits: at least 52 of them for N <= 4096, so the bias
// is below N^2 * 2^-53 (< 2^-28 at N = 4096, < 2^-37 at N = 196).
//
// RNG (counter-based, keyed by (seed, offset, sample)): Philox key = seed (64 bit), counter =
// [j / 2, sample (low 32 bits), offset (64 bit)]; one Philox block gives the keys of patches
// 2m and 2m + 1 (words 0-1 and 2-3, high word first).
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace mixfast {

// The CUDA kernel keeps a sample's keys and ranks in shared memory: 12 bytes a patch.
constexpr int64_t kMaxPatches = 4096;

// Low key bits that hold the patch index: the fewest that fit every index below n.
C10_HOST_DEVICE inline int index_bits(int64_t n) {
  int bits = 0;
  while ((int64_t{1} << bits) < n) {
    ++bits;
  }
  return bits;
}

// Keys of patches 2m and 2m + 1 (one Philox block); the second is skipped when 2m + 1 == n.
C10_HOST_DEVICE inline void patch_key_pair(uint64_t seed, uint64_t offset, uint32_t sample,
                                           uint32_t m, int64_t n, int bits, uint64_t* keys) {
  // ATen's engine: subsequence fills counter words 2-3, its offset words 0-1.
  at::Philox4_32 philox(seed, /*subsequence=*/offset,
                        /*offset=*/(static_cast<uint64_t>(sample) << 32) | m);
  for (uint32_t j = 2 * m; j < 2 * m + 2 && j < n; ++j) {
    const uint64_t hi = philox();
    const uint64_t noise = (hi << 32) | philox();
    keys[j] = ((noise >> bits) << bits) | j;
  }
}

// Position of patch j in the shuffle, counting (the CUDA kernel's way; the CPU kernel sorts when
// n is large, which gives the same positions since keys are unique).
C10_HOST_DEVICE inline int32_t key_rank(const uint64_t* keys, int64_t n, int64_t j) {
  const uint64_t key = keys[j];
  int32_t rank = 0;
  for (int64_t i = 0; i < n; ++i) {
    rank += keys[i] < key;
  }
  return rank;
}

// Kept patches (rank < num_keep) among patches 0 .. j-1; only needed for sorted_keep.
C10_HOST_DEVICE inline int64_t kept_before(const int32_t* ranks, int64_t num_keep, int64_t j) {
  int64_t count = 0;
  for (int64_t i = 0; i < j; ++i) {
    count += ranks[i] < num_keep;
  }
  return count;
}

// Writes patch j's outputs. Unsorted: the shuffle is the key order (MAE). sorted_keep: the
// shuffle is the kept patches in ascending order, then the masked ones in ascending order, so
// ids_keep is sorted and ids_restore still undoes the shuffle.
C10_HOST_DEVICE inline void write_patch(int64_t j, int32_t rank, int64_t kept_before_j,
                                        int64_t num_keep, bool sorted_keep, int64_t* ids_keep,
                                        int64_t* ids_restore, float* mask) {
  const bool kept = rank < num_keep;
  int64_t position = rank;
  if (sorted_keep) {
    position = kept ? kept_before_j : num_keep + (j - kept_before_j);
  }
  ids_restore[j] = position;
  mask[j] = kept ? 0.0f : 1.0f;
  if (kept) {
    ids_keep[position] = j;
  }
}

// Host side, shared by the CPU and CUDA entry points (masking.cpp).
int64_t check_masking_args(const at::Tensor& sample_ids, int64_t num_patches, double mask_ratio,
                           int64_t offset);

}  // namespace mixfast
