"""Random patch masking for MAE: `random_masking(B, N, mask_ratio, seed=...)`.

The outputs are MAE's (facebookresearch/mae models_mae.py): with ids_shuffle the order in which
patches are visited, `ids_keep = ids_shuffle[:, :K]` [B, K] (K = int(N * (1 - mask_ratio))),
`ids_restore = argsort(ids_shuffle)` [B, N] and `mask` [B, N] float32, 1 where a patch is removed,
in the patches' original order. So `x_masked = x.gather(1, ids_keep[..., None].expand(-1, -1, D))`
and MAE's decoder (`cat([kept tokens, mask tokens]).gather(1, ids_restore)`) work unchanged.

With `sorted_keep=True`, ids_keep is in ascending patch order and the shuffle is the kept patches
ascending, then the masked patches ascending; ids_restore undoes that shuffle, so MAE's restore
still puts every token back in place.

The randomness is counter-based: the mask of sample b depends only on (seed, offset, b), never on
the batch size, the device or the thread count; the CPU and CUDA kernels of mixfast._C and the
reference below give the same bits. Each sample's patches are shuffled by Fisher-Yates, O(N), on
a Philox4x32-10 stream, and ids_restore is written in the same pass (csrc/masking.h has the
details and the uniformity bound). `offset` lets one seed serve many steps: pass the step number.

The reference here (PyTorch only, any device) is the oracle of the tests and the fallback when
the extension is missing. Both are torch.library ops with fake implementations, so
`torch.compile(fullgraph=True)` traces a call to `random_masking` without a graph break.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixfast.checks import check_int
from mixfast.ops import _extension
from mixfast.ops.reference import MaskingResult, num_kept, random_masking_reference

MAX_PATCHES = 4096  # csrc/masking.h kMaxPatches


# ----------------------------------------------------------------------------------------------
# Ops: mixfast::random_masking (C++/CUDA, from mixfast._C) and mixfast::random_masking_reference.
# ----------------------------------------------------------------------------------------------


# mixfast::random_masking_reference is the reference itself, registered: the MaskingResult it
# returns is the schema's tuple of three tensors. The schema is written out because torch.library
# infers none from a NamedTuple result.
_REFERENCE_SCHEMA = (
    "(Tensor sample_ids, SymInt num_patches, float mask_ratio, SymInt seed, SymInt offset, "
    "bool sorted_keep) -> (Tensor, Tensor, Tensor)"
)
_reference_op = torch.library.custom_op(
    "mixfast::random_masking_reference",
    random_masking_reference,
    mutates_args=(),
    schema=_REFERENCE_SCHEMA,
)


def _fake(sample_ids, num_patches, mask_ratio, seed, offset, sorted_keep) -> tuple[Tensor, ...]:
    """The fake impl of both ops (their arguments are the schema's): sample_ids [B] ->
    ids_keep [B, K] and ids_restore [B, N] of sample_ids' dtype, mask [B, N] float32."""
    batch = sample_ids.shape[0]
    ids_keep = sample_ids.new_empty((batch, num_kept(num_patches, mask_ratio)))
    ids_restore = sample_ids.new_empty((batch, num_patches))
    return ids_keep, ids_restore, sample_ids.new_empty((batch, num_patches), dtype=torch.float32)


_reference_op.register_fake(_fake)
_EXTENSION = _extension.load()
if _EXTENSION.loaded:
    torch.library.register_fake("mixfast::random_masking")(_fake)


def implementation(device: torch.device | str = "cpu") -> str:
    """Which implementation random_masking runs for tensors on `device`."""
    device_type = torch.device(device).type
    if device_type == "cpu" and _EXTENSION.loaded:
        return "mixfast._C cpu kernel"
    if device_type == "cuda" and _EXTENSION.cuda_kernels:
        return "mixfast._C cuda kernel"
    return "reference"


def _check_args(
    batch_size: int, num_patches: int, mask_ratio: float, seed: int, offset: int
) -> None:
    check_int("batch_size", batch_size, 0, 2**31)
    check_int("num_patches", num_patches, 1, MAX_PATCHES + 1)
    if (
        isinstance(mask_ratio, bool)
        or not isinstance(mask_ratio, (int, float))
        or not 0 <= mask_ratio < 1
    ):
        raise ValueError(f"mask_ratio must be a float in [0, 1), got {mask_ratio!r}")
    check_int("seed", seed, 0, 2**64)
    check_int("offset", offset, 0, 2**63)
    if num_kept(num_patches, mask_ratio) < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps int(num_patches * (1 - mask_ratio)) = 0 of "
            f"num_patches={num_patches} patches; lower mask_ratio or raise num_patches so at "
            "least 1 is kept"
        )


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    seed: int,
    offset: int = 0,
    device: torch.device | str = "cpu",
    sorted_keep: bool = False,
) -> MaskingResult:
    """MAE's random masking of `num_patches` patches for each of `batch_size` samples.

    Returns MaskingResult(ids_keep [B, K] int64, ids_restore [B, N] int64, mask [B, N] float32)
    with K = int(N * (1 - mask_ratio)). Deterministic in (seed, offset, sample index); seed in
    [0, 2^64), offset in [0, 2^63) (e.g. the step number). See the module docstring.
    """
    _check_args(batch_size, num_patches, mask_ratio, seed, offset)
    device = torch.device(device)
    sample_ids = torch.arange(batch_size, device=device)
    signed_seed = seed - 2**64 if seed >= 2**63 else seed  # the schema's int is int64
    op = (
        torch.ops.mixfast.random_masking_reference
        if implementation(device) == "reference"
        else torch.ops.mixfast.random_masking
    )
    ids_keep, ids_restore, mask = op(
        sample_ids, num_patches, float(mask_ratio), signed_seed, offset, bool(sorted_keep)
    )
    return MaskingResult(ids_keep, ids_restore, mask)


__all__ = ["MAX_PATCHES", "MaskingResult", "random_masking", "random_masking_reference"]
