"""Switches of torch.backends for tests that compare against an fp32 reference."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for cuDNN and cuBLAS (cuDNN convs use it by default), restored by assignment:
    these flags are properties of torch.backends objects, which monkeypatch's undo
    (pytest >= 9.2) deletes instead of restoring."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
