// mixfast._C: the op schema, its CPU kernel and the Python module that records the build.
#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "masking.h"

#define MIXFAST_STR_(x) #x
#define MIXFAST_STR(x) MIXFAST_STR_(x)

namespace mixfast {

using MaskingOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

int64_t check_masking_args(const at::Tensor& sample_ids, int64_t num_patches, double mask_ratio,
                           int64_t offset) {
  TORCH_CHECK_VALUE(sample_ids.dim() == 1 && sample_ids.scalar_type() == at::kLong,
                    "random_masking: sample_ids must be a 1-D int64 tensor, got ",
                    sample_ids.dim(), "-D ", sample_ids.scalar_type());
  TORCH_CHECK_VALUE(num_patches >= 1 && num_patches <= kMaxPatches,
                    "random_masking: num_patches must be in [1, ", kMaxPatches, "], got ",
                    num_patches);
  TORCH_CHECK_VALUE(mask_ratio >= 0.0 && mask_ratio < 1.0,
                    "random_masking: mask_ratio must be in [0, 1), got ", mask_ratio);
  TORCH_CHECK_VALUE(offset >= 0, "random_masking: offset must be in [0, 2^63), got ", offset);
  // Same arithmetic as MAE's int(L * (1 - mask_ratio)).
  const auto num_keep = static_cast<int64_t>(static_cast<double>(num_patches) * (1.0 - mask_ratio));
  TORCH_CHECK_VALUE(num_keep >= 1, "random_masking: mask_ratio=", mask_ratio, " keeps ",
                    "int(num_patches * (1 - mask_ratio)) = 0 of num_patches=", num_patches,
                    " patches; lower mask_ratio or raise num_patches so at least 1 is kept");
  return num_keep;
}

namespace {

MaskingOutputs random_masking_cpu(const at::Tensor& sample_ids, int64_t num_patches,
                                  double mask_ratio, int64_t seed, int64_t offset,
                                  bool sorted_keep) {
  const int64_t num_keep = check_masking_args(sample_ids, num_patches, mask_ratio, offset);
  TORCH_CHECK(sample_ids.device().is_cpu(), "random_masking_cpu: sample_ids must be on the CPU");
  const at::Tensor samples = sample_ids.contiguous();
  const int64_t batch = samples.size(0);
  const auto index_opts = samples.options();
  at::Tensor ids_keep = at::empty({batch, num_keep}, index_opts);
  at::Tensor ids_restore = at::empty({batch, num_patches}, index_opts);
  at::Tensor mask = at::empty({batch, num_patches}, index_opts.dtype(at::kFloat));

  const int64_t* sample_ptr = samples.const_data_ptr<int64_t>();
  int64_t* keep_ptr = ids_keep.mutable_data_ptr<int64_t>();
  int64_t* restore_ptr = ids_restore.mutable_data_ptr<int64_t>();
  float* mask_ptr = mask.mutable_data_ptr<float>();
  // About 0.1 ms of work a chunk: waking threads costs more than that on a loaded machine.
  const int64_t grain = std::max<int64_t>(1, 65536 / num_patches);

  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> draws(num_patches);
    std::vector<int32_t> shuffle(num_patches);
    std::vector<int32_t> positions(num_patches);
    for (int64_t b = begin; b < end; ++b) {
      const auto sample = static_cast<uint32_t>(sample_ptr[b]);
      for (int64_t m = 0; 4 * m < num_patches - 1; ++m) {
        draw_block(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), sample,
                   static_cast<uint32_t>(m), num_patches, draws.data());
      }
      shuffle_positions(draws.data(), num_patches, shuffle.data(), positions.data());
      if (sorted_keep) {
        sort_kept_positions(num_patches, num_keep, positions.data());
      }
      for (int64_t j = 0; j < num_patches; ++j) {
        write_patch(j, positions[j], num_keep, keep_ptr + b * num_keep,
                    restore_ptr + b * num_patches, mask_ptr + b * num_patches);
      }
    }
  });
  return {ids_keep, ids_restore, mask};
}

}  // namespace

// seed and offset are SymInts so that torch.compile keeps a changing step number (the offset)
// symbolic instead of recompiling for each value.
TORCH_LIBRARY(mixfast, m) {
  m.def(
      "random_masking(Tensor sample_ids, int num_patches, float mask_ratio, SymInt seed, "
      "SymInt offset, bool sorted_keep) -> (Tensor ids_keep, Tensor ids_restore, Tensor mask)");
}

TORCH_LIBRARY_IMPL(mixfast, CPU, m) {
  m.impl("random_masking", &random_masking_cpu);
}

}  // namespace mixfast

// A plain module: the ops register with the dispatcher when the library loads. The constants let
// mixfast/_extension.py check the build against the running torch.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "mixfast compiled kernels", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
  if (PyModule_AddStringConstant(module, "TORCH_VERSION", MIXFAST_STR(MIXFAST_TORCH_VERSION)) < 0 ||
      PyModule_AddStringConstant(module, "CUDA_VERSION", MIXFAST_STR(MIXFAST_CUDA_VERSION)) < 0 ||
      PyModule_AddIntConstant(module, "CUDA_KERNELS", MIXFAST_WITH_CUDA) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
