"""Shared test setup.

Tests marked `triton` run the Triton kernels: on CUDA tensors where a GPU is present, else on CPU
tensors under the interpreter, which must be switched on before triton is imported. So CI runs
them in their own process: `TRITON_INTERPRET=1 pytest -m triton` (see the Makefile).
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_triton = pytest.mark.skip(reason="needs a GPU or TRITON_INTERPRET=1 (make test-triton)")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "triton" in item.keywords and not (HAS_CUDA or INTERPRET):
            item.add_marker(skip_triton)
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture
def triton_device() -> str:
    """Where Triton kernels run in this process: the GPU if present, else the interpreter on CPU."""
    return "cuda" if HAS_CUDA and not INTERPRET else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
