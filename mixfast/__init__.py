"""mixfast: MixTraining (MAE self-supervision + supervised learning in one mix phase) for ViTs.

`import mixfast` stays light: it never imports triton, and timm-based pieces load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "random_masking": ("mixfast.ops", "random_masking"),
    "MaskingResult": ("mixfast.ops", "MaskingResult"),
    "build_info": ("mixfast.info", "build_info"),
    "ops": ("mixfast.ops", None),
    "create_model": ("mixfast.model", "create_model"),
    "MixSchedule": ("mixfast.schedule", "MixSchedule"),
    "MixTrainer": ("mixfast.train", "MixTrainer"),
    "TrainConfig": ("mixfast.train", "TrainConfig"),
    "TrainResult": ("mixfast.train", "TrainResult"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mixfast' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
