"""Which implementation an op runs: Triton kernels or the plain-PyTorch reference.

`MIXFAST_BACKEND=auto|triton|reference` overrides the choice. `auto` sends CUDA tensors on a
GPU that Triton supports to Triton and everything else to the reference. `triton` forces the
kernels, which on CPU tensors only works under `TRITON_INTERPRET=1` (how CI tests them).
Triton is imported lazily, never by `import mixfast`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "reference")
MIN_CAPABILITY = (8, 0)  # bf16 tensor cores; older GPUs get the reference path


def requested_backend() -> str:
    value = os.environ.get("MIXFAST_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"MIXFAST_BACKEND={value!r} is not allowed; use one of {BACKENDS}")
    return value


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _gpu_supported(index: int) -> bool:
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CAPABILITY:
        warnings.warn(
            f"mixfast: GPU {index} has compute capability {capability}; the Triton kernels need "
            f"{MIN_CAPABILITY} or newer, using the PyTorch reference path",
            stacklevel=3,
        )
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the op should run its Triton kernel on `tensor`."""
    choice = requested_backend()
    if choice == "reference":
        return False
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("MIXFAST_BACKEND=triton but triton is not installed")
        if not tensor.is_cuda and not interpreter_on():
            raise RuntimeError(
                "MIXFAST_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 set before "
                "triton is imported"
            )
        return True
    return tensor.is_cuda and triton_available() and _gpu_supported(tensor.device.index or 0)


def describe() -> str:
    """The implementation `auto` picks here, for build_info()."""
    choice = requested_backend()
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and triton_available():
        return "triton (cuda tensors), reference (cpu tensors)"
    return "reference"
