// CUDA kernel of mixfast::random_masking: one block per sample; the per-patch work is the same
// inline code as the CPU kernel (masking.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "masking.h"

namespace mixfast {
namespace {

constexpr int kMaxThreads = 256;

// The draws are made in parallel, the shuffle (a chain of dependent swaps) by one thread in
// shared memory, the outputs written in parallel again.
__global__ void random_masking_kernel(const int64_t* __restrict__ samples, int64_t num_patches,
                                      int64_t num_keep, uint64_t seed, uint64_t offset,
                                      bool sorted_keep, int64_t* __restrict__ ids_keep,
                                      int64_t* __restrict__ ids_restore, float* __restrict__ mask) {
  extern __shared__ int32_t shared[];  // positions, shuffle [num_patches] each, then the draws
  int32_t* positions = shared;
  int32_t* shuffle = shared + num_patches;
  uint32_t* draws = reinterpret_cast<uint32_t*>(shared + 2 * num_patches);
  const int64_t b = blockIdx.x;
  const auto sample = static_cast<uint32_t>(samples[b]);

  for (int64_t m = threadIdx.x; 4 * m < num_patches - 1; m += blockDim.x) {
    draw_block(seed, offset, sample, static_cast<uint32_t>(m), num_patches, draws);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    shuffle_positions(draws, num_patches, shuffle, positions);
    if (sorted_keep) {
      sort_kept_positions(num_patches, num_keep, positions);
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < num_patches; j += blockDim.x) {
    write_patch(j, positions[j], num_keep, ids_keep + b * num_keep, ids_restore + b * num_patches,
                mask + b * num_patches);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> random_masking_cuda(
    const at::Tensor& sample_ids, int64_t num_patches, double mask_ratio, int64_t seed,
    int64_t offset, bool sorted_keep) {
  const int64_t num_keep = check_masking_args(sample_ids, num_patches, mask_ratio, offset);
  TORCH_CHECK(sample_ids.is_cuda(), "random_masking_cuda: sample_ids must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(sample_ids.device());
  const at::Tensor samples = sample_ids.contiguous();
  const int64_t batch = samples.size(0);
  const auto index_opts = samples.options();
  at::Tensor ids_keep = at::empty({batch, num_keep}, index_opts);
  at::Tensor ids_restore = at::empty({batch, num_patches}, index_opts);
  at::Tensor mask = at::empty({batch, num_patches}, index_opts.dtype(at::kFloat));
  if (batch == 0) {
    return {ids_keep, ids_restore, mask};
  }
  TORCH_CHECK_VALUE(batch <= INT32_MAX, "random_masking: batch_size must be at most 2^31 - 1 on "
                    "CUDA (one block per sample), got ", batch);
  const int threads =
      static_cast<int>(std::min<int64_t>(kMaxThreads, (num_patches + 31) / 32 * 32));
  const size_t smem = num_patches * (2 * sizeof(int32_t) + sizeof(uint32_t));
  random_masking_kernel<<<static_cast<unsigned int>(batch), threads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      samples.const_data_ptr<int64_t>(), num_patches, num_keep, static_cast<uint64_t>(seed),
      static_cast<uint64_t>(offset), sorted_keep,
      ids_keep.mutable_data_ptr<int64_t>(), ids_restore.mutable_data_ptr<int64_t>(),
      mask.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ids_keep, ids_restore, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(mixfast, CUDA, m) {
  m.impl("random_masking", &random_masking_cuda);
}

}  // namespace mixfast
