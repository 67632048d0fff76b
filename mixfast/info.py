"""`build_info()` and `info_lines()`: what this mixfast install runs, for `mixfast info` and bug
reports."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Any

import torch

from mixfast.ops import _backend, _extension


def build_info() -> dict[str, Any]:
    """Keys: extension (mixfast._C loaded), cuda_kernels (compiled in and loaded), masking (the
    implementation random_masking runs here), extension_note (why the extension is not used),
    built_against (torch/CUDA of the build), torch, cuda (torch's CUDA), gpu, attention and
    patch_embed (their backend, from mixfast._backend)."""
    from mixfast.ops import masking

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


OP_KEYS = ("attention", "patch_embed", "masking")


def info_lines() -> list[tuple[str, str]]:
    """(key, value) lines of `mixfast info`: versions, devices, toolkit, build_info()."""
    lines = [
        ("mixfast", _version("mixfast")),
        ("python", platform.python_version() + f" ({sys.executable})"),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torch.version.cuda", str(torch.version.cuda)),
        ("triton", _version("triton")),
        ("timm", _version("timm")),
        ("torchvision", _version("torchvision")),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            lines.append(
                (f"device cuda:{i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})")
            )
    else:
        lines.append(("device", f"cpu ({os.cpu_count()} cores), no CUDA device"))
    lines += [("nvcc", _nvcc()), ("CUDA_HOME", _cuda_home())]
    try:
        info = build_info()
    except Exception as exc:  # noqa: BLE001 - info must print even from a broken install
        lines.append(("build_info", f"unavailable ({type(exc).__name__}: {exc})"))
        return lines
    for key, value in info.items():
        if key in ("torch", "cuda", "gpu") or value in ("", None):
            continue  # printed above, or nothing to say
        if isinstance(value, dict):
            lines += [(f"{key}.{k}", str(v)) for k, v in value.items()]
        else:
            lines.append((key if key not in OP_KEYS else f"op {key}", str(value)))
    return lines


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not found"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{nvcc} (fails: {exc})"
    release = [line for line in out.stdout.splitlines() if "release" in line]
    return f"{nvcc} ({release[-1].strip() if release else 'unknown version'})"


def _cuda_home() -> str:
    """The toolkit setup.py builds against (no import of torch.utils.cpp_extension, which
    warns and reports the folder of an nvcc wrapper script)."""
    from mixfast._cuda_home import find_cuda_home

    return find_cuda_home() or "not found"
