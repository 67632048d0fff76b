"""`build_info()`: what this mixfast install runs, for `mixfast info` and bug reports."""

from __future__ import annotations

from typing import Any

import torch

from mixfast import _backend, _extension


def build_info() -> dict[str, Any]:
    """Keys: extension (mixfast._C loaded), cuda_kernels (compiled in and loaded), masking (the
    implementation random_masking runs here), extension_note (why the extension is not used),
    built_against (torch/CUDA of the build), torch, cuda (torch's CUDA), gpu, attention and
    patch_embed (their backend, from mixfast._backend)."""
    from mixfast import masking

    state = _extension.load()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    device = "cuda" if gpu else "cpu"
    backend = _backend.describe()
    return {
        "extension": state.loaded,
        "cuda_kernels": state.cuda_kernels,
        "masking": masking.implementation(device),
        "extension_note": state.reason,
        "built_against": state.built_against,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "attention": backend,
        "patch_embed": backend,
    }
