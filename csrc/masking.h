// Random patch masking, the per-sample part shared by the CPU kernel (masking.cpp) and the CUDA
// kernel (masking_cuda.cu). Everything here is __host__ __device__, so the CPU tests run the very
// code the GPU runs.
//
// Selection: a Fisher-Yates shuffle of the sample's patches, O(N). Step i (0 <= i < N - 1) swaps
// position i with position i + floor(u_i * (N - i) / 2^32), u_i the i-th 32-bit draw; the first
// K positions of the shuffle are kept. Every ordering of the patches, hence every K-subset, is
// equally likely up to the rounding of the multiply-shift: each step's choice has probability
// within (N - i) / 2^32 of 1 / (N - i), relative (< 1e-6 at N = 4096).
//
// RNG (counter-based, keyed by (seed, offset, sample)): Philox4x32-10 with key = seed (64 bit)
// and counter = [m, sample (low 32 bits), offset (64 bit)]; block m gives draws 4m .. 4m + 3.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace mixfast {

// The CUDA kernel keeps a sample's draws, shuffle and positions in shared memory: 12 bytes a
// patch, 48 KiB at the largest N.
constexpr int64_t kMaxPatches = 4096;

// Draws 4m .. 4m + 3 of a sample (one Philox block); those at or past n - 1 are not needed.
C10_HOST_DEVICE inline void draw_block(uint64_t seed, uint64_t offset, uint32_t sample,
                                       uint32_t m, int64_t n, uint32_t* draws) {
  // ATen's engine: subsequence fills counter words 2-3, its offset words 0-1.
  at::Philox4_32 philox(seed, /*subsequence=*/offset,
                        /*offset=*/(static_cast<uint64_t>(sample) << 32) | m);
  for (int64_t i = 4 * int64_t{m}; i < 4 * int64_t{m} + 4 && i < n - 1; ++i) {
    draws[i] = philox();
  }
}

// Fisher-Yates over the patch indices: positions[j] = where patch j lands in the shuffle,
// written as each position becomes final (shuffle[] is scratch of n entries).
C10_HOST_DEVICE inline void shuffle_positions(const uint32_t* draws, int64_t n, int32_t* shuffle,
                                              int32_t* positions) {
  for (int64_t j = 0; j < n; ++j) {
    shuffle[j] = static_cast<int32_t>(j);
  }
  for (int64_t i = 0; i < n - 1; ++i) {
    const uint64_t span = static_cast<uint64_t>(n - i);
    const int64_t pick = i + static_cast<int64_t>((uint64_t{draws[i]} * span) >> 32);
    const int32_t chosen = shuffle[pick];
    shuffle[pick] = shuffle[i];
    shuffle[i] = chosen;
    positions[chosen] = static_cast<int32_t>(i);
  }
  positions[shuffle[n - 1]] = static_cast<int32_t>(n - 1);
}

// sorted_keep: the shuffle becomes the kept patches in ascending order, then the masked ones in
// ascending order (same kept set, ids_keep sorted, ids_restore still undoes the shuffle).
C10_HOST_DEVICE inline void sort_kept_positions(int64_t n, int64_t num_keep, int32_t* positions) {
  int64_t kept = 0;  // kept patches before j
  for (int64_t j = 0; j < n; ++j) {
    const bool is_kept = positions[j] < num_keep;
    positions[j] = static_cast<int32_t>(is_kept ? kept : num_keep + (j - kept));
    kept += is_kept;
  }
}

// Patch j's outputs from its position in the shuffle.
C10_HOST_DEVICE inline void write_patch(int64_t j, int32_t position, int64_t num_keep,
                                        int64_t* ids_keep, int64_t* ids_restore, float* mask) {
  ids_restore[j] = position;
  mask[j] = position < num_keep ? 0.0f : 1.0f;
  if (position < num_keep) {
    ids_keep[position] = j;
  }
}

// Host side, shared by the CPU and CUDA entry points (masking.cpp).
int64_t check_masking_args(const at::Tensor& sample_ids, int64_t num_patches, double mask_ratio,
                           int64_t offset);

}  // namespace mixfast
