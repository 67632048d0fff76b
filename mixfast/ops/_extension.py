"""Loading the compiled extension mixfast._C, or saying once why it is not used.

setup.py writes `_C_build.json` next to the library with the torch and CUDA versions it was built
against. They are compared with the running torch *before* the library is imported, since a build
for another torch fails with an undefined symbol at best. Any mismatch or load error gives one
warning with the rebuild command, and callers fall back to the reference implementation.
`MIXFAST_DISABLE_EXTENSION=1` skips the extension on purpose (no warning).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from types import ModuleType

import torch

BUILD_RECORD = "_C_build.json"


@dataclass(frozen=True)
class ExtensionState:
    module: ModuleType | None
    reason: str  # why it is not loaded; "" when it is
    built_against: dict = field(default_factory=dict)

    @property
    def loaded(self) -> bool:
        return self.module is not None

    @property
    def cuda_kernels(self) -> bool:
        return self.module is not None and bool(self.module.CUDA_KERNELS)


def rebuild_command() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(root, "setup.py")):
        return f"pip install --no-build-isolation -e {root}"
    return "pip install --no-build-isolation --force-reinstall --no-deps mixfast"


def _read_record(origin: str) -> dict:
    path = os.path.join(os.path.dirname(origin), BUILD_RECORD)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _version_mismatch(torch_version: str | None, cuda_version: str | None) -> str:
    if torch_version and torch_version != torch.__version__:
        return f"it was built against torch {torch_version}, this is torch {torch.__version__}"
    if cuda_version not in (None, "none") and cuda_version != torch.version.cuda:
        return (
            f"its CUDA kernels were built for CUDA {cuda_version}, torch uses {torch.version.cuda}"
        )
    return ""


def _try_load() -> ExtensionState:
    if os.environ.get("MIXFAST_DISABLE_EXTENSION", "0") == "1":
        return ExtensionState(None, "disabled by MIXFAST_DISABLE_EXTENSION=1")
    spec = importlib.util.find_spec("mixfast._C")
    if spec is None or spec.origin is None:
        return ExtensionState(None, "mixfast._C is not built")
    record = _read_record(spec.origin)
    mismatch = _version_mismatch(record.get("torch"), record.get("cuda"))
    if mismatch:
        return ExtensionState(None, mismatch, record)
    try:
        module = importlib.import_module("mixfast._C")
    except Exception as exc:  # undefined symbol, wrong ABI, missing libcudart...
        return ExtensionState(None, f"it failed to load ({type(exc).__name__}: {exc})", record)
    mismatch = _version_mismatch(module.TORCH_VERSION, module.CUDA_VERSION)
    if mismatch:  # a stale or missing record
        return ExtensionState(None, mismatch, record)
    return ExtensionState(module, "", record)


@functools.cache
def load() -> ExtensionState:
    """The extension's state, warning once per process when it cannot be used."""
    state = _try_load()
    if not state.loaded and not state.reason.startswith("disabled"):
        warnings.warn(
            f"mixfast: not using the compiled extension mixfast._C: {state.reason}. Falling back "
            f"to the PyTorch reference. Rebuild it with: {rebuild_command()}",
            RuntimeWarning,
            stacklevel=2,
        )
    return state
