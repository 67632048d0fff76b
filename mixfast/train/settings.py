"""The data and model settings of a run, typed and validated beside `TrainConfig`, and
`RunSpec`, the three together: what `mixfast train` and `mixfast compare` build from their flags
(generated from these fields, as TrainConfig's are) and what mixfast/experiment.py reads.
Pure: no data is read and no model is built here. Errors are `SettingError`s naming {name}."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixfast.budget import AUTO_SETTINGS
from mixfast.checks import SettingError, check_choice, check_number
from mixfast.data import REGIMES
from mixfast.data.files import MEMORY_CAP_GB
from mixfast.data.training import CROP_SCALE
from mixfast.model.weights import HEAD_RULES
from mixfast.train.config import TrainConfig

DEFAULT_MODEL = "vit_tiny_patch16_224"
MODEL_OVERRIDES = ("depth", "embed_dim", "num_heads", "decoder_dim", "decoder_depth")
DATA_MODES = ("auto", "stream", "memory")


@dataclass(frozen=True)
class DataConfig:
    """Which images a run reads and how they are split; DIR/data.json restates it."""

    dataset: str = "fashion-mnist"  # a name, a folder, a .tar, wds/DIR or hfds/DIR
    data_dir: str | None = None
    img_size: int | None = None  # None: the data's
    fraction: float = 1.0  # labeled fraction per class
    per_class: int | None = None  # labeled images per class (instead of fraction)
    train_limit: int | None = None
    test_limit: int | None = None
    regime: str = "data-limited"  # "data-limited" | "semi-supervised"
    val_fraction: float = 0.1
    val_max: int = 5000
    task: tuple[str, ...] = ()  # `--task` specs; empty: one task, the dataset's classes
    data_mode: str = "auto"  # "auto" | "stream" | "memory"
    skip_bad: bool = False
    memory_cap_gb: float = MEMORY_CAP_GB
    augment: bool = False  # on-device random resized crop + flip
    augment_scale: float = CROP_SCALE

    def validate(self) -> None:
        check_choice("regime", self.regime, REGIMES)
        check_choice("data_mode", self.data_mode, DATA_MODES)
        if self.img_size is not None and self.img_size < 4:
            raise SettingError(f"{{img_size}} must be >= 4, got {self.img_size}")
        check_fraction(self.fraction)
        if not 0.0 < self.augment_scale <= 1.0:
            raise SettingError(f"{{augment_scale}} must be in (0, 1], got {self.augment_scale}")
        if self.task and self.per_class is not None:
            raise SettingError("{per_class} does not apply with {task}; give fraction= per task")

    def record(self) -> dict[str, Any]:
        """The settings as DIR/data.json states them."""
        data = dataclasses.asdict(self)
        data["task"] = list(self.task)
        for runtime in ("data_mode", "skip_bad", "memory_cap_gb", "img_size"):
            data.pop(runtime)
        return data


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise SettingError(f"{{fraction}} must be in (0, 1], got {fraction}")


@dataclass(frozen=True)
class ModelConfig:
    """The timm ViT a run builds and what overrides its defaults (None: the model's or, for
    patch_size, the largest of 16/8/7/4 giving >= 16 patches of the images)."""

    model: str = DEFAULT_MODEL
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    pretrained: bool = False  # start from the model's timm pretrained weights (timm's cache)
    pretrained_path: str | None = None  # start from a weights file (mixfast/model/weights.py)
    pretrained_head: str = "auto"  # which heads of the weights load (weights.py's HEAD_RULES)
    drop_path: float = 0.0  # stochastic depth rate (timm's drop_path_rate), every training step

    def validate(self) -> None:
        """Sizes >= 1, a width divisible by the heads and one existing source of weights,
        before any data is read."""
        for name in ("patch_size", *MODEL_OVERRIDES):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingError(f"{{{name}}} must be >= 1, got {value}")
        width, heads = self.embed_dim, self.num_heads
        if width is not None and heads is not None and width % heads:
            raise SettingError(f"{{embed_dim}} {width} must be divisible by {{num_heads}} {heads}")
        check_number("drop_path", self.drop_path, 0.0, 1.0, high_open=True)
        if self.pretrained and self.pretrained_path is not None:
            raise SettingError("give {pretrained} or {pretrained_path}, not both")
        check_choice("pretrained_head", self.pretrained_head, HEAD_RULES)
        path = self.pretrained_path
        if path is not None and not Path(path).is_file():
            raise SettingError(f"{{pretrained_path}} {path}: no such file")

    def overrides(self) -> dict[str, int | float]:
        """create_model keyword overrides that are set (drop_path as drop_path_rate, when > 0)."""
        kwargs = {n: getattr(self, n) for n in MODEL_OVERRIDES if getattr(self, n) is not None}
        return kwargs | ({"drop_path_rate": self.drop_path} if self.drop_path else {})


@dataclass(frozen=True)
class RunSpec:
    """One run's settings: data, model and training. `auto` names the training settings
    (of mixfast/budget.py's AUTO_SETTINGS) to size from the data before the run
    (experiment.with_budget); until then `train` holds TrainConfig's defaults for them."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    auto: tuple[str, ...] = ()

    def validate(self) -> None:
        self.data.validate()
        self.model.validate()
        self.train.validate()
        for name in self.auto:
            check_choice("auto", name, AUTO_SETTINGS)

    def replace(self, *, data: dict | None = None, train: dict | None = None) -> RunSpec:
        """A copy with some data and training settings replaced (a cell of a comparison);
        a training setting given here is no longer "auto"."""
        return RunSpec(
            dataclasses.replace(self.data, **(data or {})),
            self.model,
            dataclasses.replace(self.train, **(train or {})),
            tuple(name for name in self.auto if name not in (train or {})),
        )


__all__ = ["DEFAULT_MODEL", "MODEL_OVERRIDES", "DataConfig", "ModelConfig", "RunSpec"]
