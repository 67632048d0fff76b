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
reference below give the same bits. Patch j of a sample gets a 64-bit key, Philox4x32-10 noise in
the high bits and j in the low bits, and the shuffle sorts the keys (csrc/masking.h has the
details and the uniformity bound). `offset` lets one seed serve many steps: pass the step number.

The reference here (PyTorch only, any device) is the oracle of the tests and the fallback when
the extension is missing. Both are torch.library ops with fake implementations, so
`torch.compile(fullgraph=True)` traces a call to `random_masking` without a graph break.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mixfast import _extension

MAX_PATCHES = 4096  # csrc/masking.h kMaxPatches
_M32 = 0xFFFFFFFF
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments per round
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers


class MaskingResult(NamedTuple):
    ids_keep: Tensor  # [B, K] int64
    ids_restore: Tensor  # [B, N] int64
    mask: Tensor  # [B, N] float32, 1 = masked


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """K, computed exactly as MAE does (and as the C++ op does, in double precision)."""
    return int(num_patches * (1 - mask_ratio))


# ----------------------------------------------------------------------------------------------
# The reference: Philox4x32-10 on int64 tensors holding 32-bit words, then a sort.
# ----------------------------------------------------------------------------------------------


def _mulhilo(multiplier: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of multiplier * x. Splitting the multiplier into 16-bit halves keeps
    every intermediate below 2^49, so int64 never overflows."""
    low_part = x * (multiplier & 0xFFFF)
    high_part = x * (multiplier >> 16)
    total = low_part + ((high_part & 0xFFFF) << 16)
    return (total >> 32) + (high_part >> 16), total & _M32


def philox4x32_10(counter: tuple[Tensor, ...], key: tuple[int, int]) -> tuple[Tensor, ...]:
    """Philox4x32-10 of 4 counter words (int64 tensors of 32-bit values) under a 2-word key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
        hi0, lo0 = _mulhilo(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def patch_keys(sample_ids: Tensor, num_patches: int, seed: int, offset: int) -> Tensor:
    """[B, N] int64 keys whose order is the order of csrc/masking.h's unsigned 64-bit keys."""
    device = sample_ids.device
    seed &= 2**64 - 1
    blocks = torch.arange((num_patches + 1) // 2, device=device)
    shape = (sample_ids.shape[0], blocks.shape[0])
    counter = (
        blocks.expand(shape),
        (sample_ids & _M32)[:, None].expand(shape),
        torch.full(shape, offset & _M32, dtype=torch.int64, device=device),
        torch.full(shape, offset >> 32, dtype=torch.int64, device=device),
    )
    r0, r1, r2, r3 = philox4x32_10(counter, (seed & _M32, seed >> 32))
    high = torch.stack((r0, r2), dim=-1).flatten(1)[:, :num_patches]
    low = torch.stack((r1, r3), dim=-1).flatten(1)[:, :num_patches]
    bits = max(num_patches - 1, 0).bit_length()
    low = ((low >> bits) << bits) | torch.arange(num_patches, device=device)
    return (high - 2**31) * 2**32 + low  # unsigned order -> signed order, no overflow


def random_masking_reference(
    sample_ids: Tensor,
    num_patches: int,
    mask_ratio: float,
    seed: int,
    offset: int,
    sorted_keep: bool,
) -> MaskingResult:
    """The masking of mixfast._C in plain PyTorch (sort-based, so an independent oracle)."""
    num_keep = num_kept(num_patches, mask_ratio)
    ids_shuffle = torch.argsort(patch_keys(sample_ids, num_patches, seed, offset), dim=1)
    if sorted_keep:
        masked = torch.ones_like(ids_shuffle, dtype=torch.uint8)
        masked.scatter_(1, ids_shuffle[:, :num_keep], 0)
        ids_shuffle = torch.argsort(masked, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(ids_shuffle.shape, dtype=torch.float32, device=sample_ids.device)
    mask[:, :num_keep] = 0
    ids_keep = ids_shuffle[:, :num_keep].contiguous()
    return MaskingResult(ids_keep, ids_restore, mask.gather(1, ids_restore))


# ----------------------------------------------------------------------------------------------
# Ops: mixfast::random_masking (C++/CUDA, from mixfast._C) and mixfast::random_masking_reference.
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("mixfast::random_masking_reference", mutates_args=())
def _reference_op(
    sample_ids: Tensor,
    num_patches: int,
    mask_ratio: float,
    seed: int,
    offset: int,
    sorted_keep: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        random_masking_reference(sample_ids, num_patches, mask_ratio, seed, offset, sorted_keep)
    )


def _fake(
    sample_ids: Tensor,
    num_patches: int,
    mask_ratio: float,
    seed: int,
    offset: int,
    sorted_keep: bool,
) -> tuple[Tensor, Tensor, Tensor]:
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


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, torch.SymInt))
        or not low <= value < high
    ):
        raise ValueError(f"{name} must be an int in [{low}, {high}), got {value!r}")
    return value


def _check_args(
    batch_size: int, num_patches: int, mask_ratio: float, seed: int, offset: int
) -> None:
    _check_int("batch_size", batch_size, 0, 2**31)
    _check_int("num_patches", num_patches, 1, MAX_PATCHES + 1)
    if (
        isinstance(mask_ratio, bool)
        or not isinstance(mask_ratio, (int, float))
        or not 0 <= mask_ratio < 1
    ):
        raise ValueError(f"mask_ratio must be a float in [0, 1), got {mask_ratio!r}")
    _check_int("seed", seed, 0, 2**64)
    _check_int("offset", offset, 0, 2**63)
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


def mae_random_masking(
    batch_size: int, num_patches: int, mask_ratio: float, *, device: torch.device | str = "cpu"
) -> MaskingResult:
    """MAE's own masking (argsort of uniform noise from torch's generator): the benchmark
    baseline, and what the statistical tests compare against."""
    num_keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :num_keep] = 0
    return MaskingResult(ids_shuffle[:, :num_keep], ids_restore, torch.gather(mask, 1, ids_restore))


__all__ = ["MAX_PATCHES", "MaskingResult", "random_masking", "random_masking_reference"]
