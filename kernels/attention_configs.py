"""Launch configs of the varlen attention kernels (kernels/attention.py): the key tile of a
group of sequences, the spill-free candidates per (tile, head dim, dtype, heads), and the pick:
the fastest candidate, timed once per process on the GPU at the first call (MIXFAST_AUTOTUNE=0,
the interpreter and CUDA-graph capture take the first)."""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton

MAX_TILE = 128
SHARED_HEADS_TILE = 64  # sequences this short may take all heads in one program...
MAX_SHARED_HEADS = 4  # ...when they have at most this many heads


def _tile(max_seqlen: int) -> int:
    """Key tile: the next power of two of the longest sequence, 16 at least, MAX_TILE at most."""
    return min(max(16, triton.next_power_of_2(max(max_seqlen, 1))), MAX_TILE)


@functools.cache  # read-only lists: callers copy a config before changing it
def _fwd_candidates(tile: int, head_dim: int, dtype: torch.dtype, heads: int = 1) -> list[dict]:
    """Launch configs worth timing; the first is the default (and the interpreter's). Each one
    compiles for sm_90 without register spills (ptxas -v, strides divisible by 16 as the JIT
    specialises them), except fp32."""
    if dtype == torch.float32:  # exact fp32 products are register-hungry: small tiles
        return [dict(BLOCK_M=min(tile, 32), BLOCK_N=min(tile, 32), num_warps=4, HEADS=1)]
    if head_dim <= 64:
        configs = [
            dict(BLOCK_M=tile, BLOCK_N=min(tile, 64), num_warps=8 if tile >= 128 else 4),
            dict(BLOCK_M=tile, BLOCK_N=tile, num_warps=8 if tile >= 128 else 4),
            dict(BLOCK_M=min(tile, 64), BLOCK_N=min(tile, 64), num_warps=4),
            dict(BLOCK_M=min(tile, 64), BLOCK_N=tile, num_warps=4),
        ]
    else:
        configs = [
            dict(BLOCK_M=min(tile, 64), BLOCK_N=min(tile, 32), num_warps=4),
            dict(BLOCK_M=tile, BLOCK_N=min(tile, 32), num_warps=8 if tile >= 128 else 4),
            dict(BLOCK_M=min(tile, 64), BLOCK_N=min(tile, 64), num_warps=4),
        ]
    return _with_heads(configs, tile, heads)


@functools.cache
def _bwd_candidates(tile: int, head_dim: int, dtype: torch.dtype, heads: int = 1) -> list[dict]:
    """BLOCK_N (the key tile a program owns) = tile keeps every sequence up to 128 tokens on the
    one-pass path; a smaller key tile trades that for smaller, more numerous programs."""
    if dtype == torch.float32:
        return [dict(BLOCK_M=min(tile, 16), BLOCK_N=min(tile, 32), num_warps=4, HEADS=1)]
    if head_dim <= 64:
        warps = 8 if tile >= 128 else 4
        configs = [
            dict(BLOCK_M=min(tile, 32), BLOCK_N=tile, num_warps=warps),
            dict(BLOCK_M=min(tile, 16), BLOCK_N=tile, num_warps=warps),
            dict(BLOCK_M=min(tile, 16), BLOCK_N=tile, num_warps=4),  # 2 programs per SM
            dict(BLOCK_M=min(tile, 32), BLOCK_N=min(tile, 64), num_warps=4),
        ]
    else:
        configs = [
            dict(BLOCK_M=min(tile, 16), BLOCK_N=min(tile, 32), num_warps=4),
            dict(BLOCK_M=min(tile, 16), BLOCK_N=tile, num_warps=8 if tile >= 128 else 4),
            dict(BLOCK_M=min(tile, 32), BLOCK_N=min(tile, 64), num_warps=8 if tile >= 64 else 4),
        ]
    return _with_heads(configs, tile, heads)


def _with_heads(configs: list[dict], tile: int, heads: int) -> list[dict]:
    """Every config on one head per program (HEADS=1, the default), then, for short sequences
    (tile <= SHARED_HEADS_TILE), the default config taking all heads of a sequence in one
    program: a few times the work per program, a few times fewer programs."""
    configs = [dict(c, HEADS=1) for c in configs]
    if 1 < heads <= MAX_SHARED_HEADS and tile <= SHARED_HEADS_TILE:
        configs.append(dict(configs[0], HEADS=heads))
    return [c for i, c in enumerate(configs) if c not in configs[:i]]


_TUNED: dict[tuple, dict] = {}


def tuned_configs() -> dict[str, dict]:
    """The configs picked so far on this GPU, for benchmark records."""
    return {" ".join(map(str, key)): config for key, config in _TUNED.items()}


def _pick_config(key: tuple, candidates: list[dict], launch, on_gpu: bool) -> dict:
    """Fastest candidate, timed once per key on the GPU (a handful of compiles: seconds);
    the first candidate under the interpreter, during CUDA-graph capture or with
    MIXFAST_AUTOTUNE=0."""
    if key in _TUNED:
        return _TUNED[key]
    if (
        not on_gpu
        or len(candidates) == 1
        or os.environ.get("MIXFAST_AUTOTUNE", "1") == "0"
        or torch.cuda.is_current_stream_capturing()
    ):
        return candidates[0]
    from triton.testing import do_bench

    timings = []
    for config in candidates:
        try:
            timings.append((do_bench(lambda c=config: launch(c), warmup=2, rep=10), config))
        except Exception as exc:  # e.g. out of shared memory on this GPU: not a candidate here
            warnings.warn(f"mixfast attention: config {config} failed: {exc}", stacklevel=3)
    _TUNED[key] = min(timings, key=lambda t: t[0])[1] if timings else candidates[0]
    return _TUNED[key]
