"""One run from its settings (a `RunSpec`: data, model and training): load and split the data,
size the model, hand the trainer its augmentation, describe what was used (DIR/data.json), and
check a resumed run's data and model settings against that record. What `mixfast train` and
`mixfast compare` share. Errors are `SettingError`s naming settings as {name}."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixfast.budget import AUTO_SETTINGS, Budget, auto_budget
from mixfast.checkpoint import read_json
from mixfast.checks import SettingError
from mixfast.data import (
    TrainingData,
    open_dataset,
    parse_task_spec,
    prepare_task_data,
    prepare_training_data,
)
from mixfast.train.config import TrainConfig
from mixfast.train.distributed import env_world
from mixfast.train.settings import (
    DEFAULT_MODEL,
    MODEL_OVERRIDES,
    DataConfig,
    ModelConfig,
    RunSpec,
    check_fraction,
)
from mixfast.train.streams import steps_per_pass

MIN_PATCHES = 16
SPLIT_SETTINGS = ("train_limit", "test_limit", "regime", "val_fraction", "val_max")  # DataConfig's
SKIPPED_LISTED = 100  # unreadable files named in data.json (all are counted)


def default_patch_size(img_size: int) -> int:
    """The largest of 16 (>= 128 px), 8, 7, 4 dividing img_size with >= 16 patches."""
    if img_size >= 128:
        return 16
    for patch in (8, 7, 4):
        if img_size % patch == 0 and (img_size // patch) ** 2 >= MIN_PATCHES:
            return patch
    return 4 if img_size % 4 == 0 else 1


def check_patch_grid(img_size: int, patch_size: int) -> None:
    if patch_size < 1 or img_size % patch_size:
        raise SettingError(f"{{patch_size}} {patch_size} must divide {{img_size}} {img_size}")
    patches = (img_size // patch_size) ** 2
    if patches < MIN_PATCHES:
        warnings.warn(
            f"patch grid too coarse: {img_size}x{img_size} images with patch {patch_size} give "
            f"{patches} patches (< {MIN_PATCHES}); MAE masking 75% leaves too little to see. "
            "Use a smaller patch size.",
            stacklevel=2,
        )


# ---------------------------------------------------------------------------------- data


def load_data(spec: RunSpec) -> TrainingData:
    """The run's images, split as spec.data says."""
    spec.data.validate()
    spec.model.validate()
    return prepare_data(open_source(spec), spec)


def open_source(spec: RunSpec):
    """The dataset's splits (files or tensors), opened once for every run that shares them."""
    data = spec.data
    return open_dataset(
        data.dataset,
        data.data_dir,
        size=data.img_size,
        seed=spec.train.seed,
        data_mode=data.data_mode,
        memory_cap_gb=data.memory_cap_gb,
        skip_bad=data.skip_bad,
        workers=spec.train.num_workers,
    )


def prepare_data(splits, spec: RunSpec) -> TrainingData:
    """The labeled subset, validation split and SSL pool of spec.data (one task, or the
    `task` specs) from the opened splits."""
    data = spec.data
    check_fraction(data.fraction)
    split = {name: getattr(data, name) for name in SPLIT_SETTINGS} | {"seed": spec.train.seed}
    if data.task:
        if data.per_class is not None:
            raise SettingError("{per_class} does not apply with {task}; give fraction= per task")
        specs = [parse_task_spec(text) for text in data.task]
        return prepare_task_data(splits, specs, fraction=data.fraction, **split)
    return prepare_training_data(splits, fraction=data.fraction, per_class=data.per_class, **split)


def with_budget(spec: RunSpec, data: TrainingData) -> tuple[RunSpec, Budget | None]:
    """`spec` with its "auto" settings (spec.auto) sized from `data` by mixfast/budget.py's
    rule, and the Budget that says how (None when nothing was "auto")."""
    if not spec.auto:
        return spec, None
    train = spec.train
    given = {name: None if name in spec.auto else getattr(train, name) for name in AUTO_SETTINGS}
    devices = env_world() * train.accum_steps
    budget = auto_budget(data.sl_size, data.ssl_size, devices=devices, **given)
    sized = {name: getattr(budget, name) for name in spec.auto}
    return dataclasses.replace(spec.replace(train=sized), auto=()), budget


def check_data_fits(spec: RunSpec, data: TrainingData) -> None:
    """Before any work: one batch of training images, and a mask that keeps a patch."""
    from mixfast.ops.reference import num_kept

    config = spec.train
    batch = config.batch_size * config.accum_steps * env_world()
    for task in data.tasks:
        if len(task.sl_data) < batch:
            of = f" of task {task.name}" if len(data.tasks) > 1 else ""
            raise SettingError(
                f"{{batch_size}} {config.batch_size}: only {len(task.sl_data)} labeled training "
                f"images{of}, fewer than one batch ({batch} with accumulation and devices)"
            )
    weights = config.task_weights
    if weights is not None and len(weights) != len(data.tasks):
        raise SettingError(
            f"{{task_weights}} has {len(weights)} weights for {len(data.tasks)} task(s)"
        )
    # the plan can be made (each objective's steps per pass as the trainer's streams count them)
    passes = steps_per_pass(data.ssl_size, batch), steps_per_pass(data.sl_size, batch)
    config.schedule().epoch_steps(*passes)
    kwargs = model_kwargs(spec.model, data)
    patches = (kwargs["img_size"] // kwargs["patch_size"]) ** 2
    if config.pipeline != "sl" and num_kept(patches, config.mask_ratio) < 1:
        raise SettingError(
            f"{{mask_ratio}} {config.mask_ratio} keeps no patch of {patches}; lower it"
        )


def with_augment(config: TrainConfig, data: TrainingData, settings: DataConfig) -> TrainConfig:
    """Hand the trainer the on-device batch augmentation when settings.augment."""
    if not settings.augment:
        return config
    augment = data.augment(seed=config.seed, scale=(settings.augment_scale, 1.0))
    return dataclasses.replace(config, augment=augment)


# ---------------------------------------------------------------------------------- model


def model_kwargs(settings: ModelConfig, data: TrainingData) -> dict[str, Any]:
    """create_model kwargs: the data's shape and classes, patch_size and the overrides."""
    channels, img_size, _ = data.image_shape
    patch_size = settings.patch_size
    if patch_size is None:
        patch_size = default_patch_size(img_size)
    check_patch_grid(img_size, patch_size)
    kwargs: dict[str, Any] = dict(img_size=img_size, patch_size=patch_size, in_chans=channels)
    if len(data.tasks) > 1:
        kwargs["task_classes"] = data.task_classes
    else:
        kwargs["num_classes"] = data.num_classes
    return {**kwargs, **settings.overrides()}


def build_model(spec: RunSpec, data: TrainingData) -> nn.Module:
    """The run's model; with {pretrained} / {pretrained_path} its weights loaded and adapted
    (SettingError when they do not fit), what was done in `model.pretrained_notes`."""
    from mixfast.model import create_model

    torch.manual_seed(spec.train.seed)  # every pipeline of one seed starts from the same weights
    settings = spec.model
    weights = {"pretrained": True} if settings.pretrained else {}
    if settings.pretrained_path is not None:
        weights = {"pretrained_path": settings.pretrained_path}
    if weights:
        weights["pretrained_head"] = settings.pretrained_head
    weights["head_labels"] = data.task_labels  # written with the weights into last.pt
    # the fresh layers are drawn first, from the seed, then the weights load
    try:
        return create_model(settings.model, **model_kwargs(settings, data), **weights)
    except AssertionError as exc:  # timm's Attention: the width must split into the heads
        if "divisible by num_heads" not in str(exc):
            raise
        raise SettingError(
            f"{{embed_dim}} {settings.embed_dim} must be divisible by the number of heads "
            f"({settings.model}'s own unless {{num_heads}} is given); give {{num_heads}}"
        ) from exc


def from_weights(settings: ModelConfig) -> bool:
    """The model starts from pretrained weights: it counts as pre-trained."""
    return bool(settings.pretrained or settings.pretrained_path is not None)


def with_weights(config: TrainConfig, settings: ModelConfig) -> TrainConfig:
    """Hand the trainer `pretrained_weights` when the model starts from weights: the run counts
    as pre-trained (the fine-tune layer decay defaults to 0.75, as after pre-training)."""
    if config.pretrained_weights == from_weights(settings):
        return config
    return dataclasses.replace(config, pretrained_weights=from_weights(settings))


def weights_record(spec: RunSpec, model: nn.Module | None) -> dict[str, Any]:
    """What DIR/data.json says of the weights the model started from: the settings and, from
    the built `model`, the loader's notes and the reconstruction target (norm_pix_loss)."""
    settings = spec.model
    record: dict[str, Any] = {
        "pretrained": settings.pretrained,
        "pretrained_path": settings.pretrained_path,
        "pretrained_head": settings.pretrained_head,
        "pretrained_notes": list(getattr(model, "pretrained_notes", [])),
    }
    if model is not None and from_weights(settings):
        record["norm_pix_loss"] = bool(model.norm_pix_loss)
    return record


# ---------------------------------------------------------------------------------- records


def data_record(
    spec: RunSpec,
    data: TrainingData,
    model: nn.Module | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """DIR/data.json: the data and model settings of a run and what they gave (with the built
    `model`, what its pretrained weights loaded; with an automatic `budget`, how it was sized)."""
    return {
        **spec.data.record(),
        "storage": data.storage,
        "skipped_bad": len(data.skipped),
        "skipped_files": list(data.skipped[:SKIPPED_LISTED]),
        "skipped_entries": data.left_out.record(SKIPPED_LISTED),  # hidden, not images, ...
        "labeled": len(data.sl_data),
        "validation": data.val_size,
        "test": len(data.test_data),
        "ssl_images": data.ssl_size,
        "tasks": [
            {"name": t.name, "note": t.note, "classes": t.num_classes, "labeled": len(t.sl_data)}
            for t in data.tasks
        ],
        "image_shape": list(data.image_shape),
        "model": spec.model.model,
        "model_kwargs": model_kwargs(spec.model, data),
        **weights_record(spec, model),
        "budget": None if budget is None else budget.record(),
    }


def record_differences(spec: RunSpec, saved: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(name, recorded, now) of every data or model setting that differs from a run's
    DIR/data.json (the settings the trainer's checkpoint does not hold)."""
    if saved is None:
        return []
    model = spec.model  # the weights it starts from set norm_pix_loss, which last.pt lacks
    now = {
        **spec.data.record(),
        "model": model.model,
        "pretrained": model.pretrained,
        "pretrained_path": model.pretrained_path,
        "pretrained_head": model.pretrained_head,
    }
    diffs = [(k, saved[k], v) for k, v in now.items() if k in saved and saved[k] != v]
    kwargs = saved.get("model_kwargs", {})
    for name in ("patch_size", *MODEL_OVERRIDES):
        value = getattr(spec.model, name)
        if value is not None and kwargs.get(name) != value:
            diffs.append((name, kwargs.get(name), value))
    if kwargs.get("drop_path_rate", 0.0) != model.drop_path:
        diffs.append(("drop_path", kwargs.get("drop_path_rate", 0.0), model.drop_path))
    return diffs


def setting_differences(
    spec: RunSpec, saved_config: dict[str, Any], saved_data: dict[str, Any] | None
) -> list[tuple[str, Any, Any]]:
    """(name, recorded, now) of every setting that differs from a run's record: its
    TrainConfig (config.json) and its data.json (data and model)."""
    config = spec.train
    changed = [k for k in config.changed_on_resume(saved_config) if k not in spec.auto]
    diffs = [(k, saved_config[k], getattr(config, k)) for k in changed]
    return diffs + record_differences(spec, saved_data)


def check_data_record(spec: RunSpec, run_dir: str | Path) -> None:
    """Before a resumed run reads its data: the data and model settings are the ones
    DIR/data.json records (the checkpoint's own settings are checked when it is loaded)."""
    diffs = record_differences(spec, read_json(Path(run_dir) / "data.json"))
    if diffs:
        listed = "; ".join(f"{{{name}}}: {old!r} -> {new!r}" for name, old, new in diffs)
        raise SettingError(
            f"{{resume}}: {run_dir} was made with other settings ({listed}); resume "
            "with the run's settings or start a new run"
        )


__all__ = [
    "DEFAULT_MODEL",
    "RunSpec",
    "build_model",
    "check_data_fits",
    "check_data_record",
    "data_record",
    "from_weights",
    "load_data",
    "model_kwargs",
    "open_source",
    "prepare_data",
    "setting_differences",
    "with_budget",
    "weights_record",
    "with_augment",
    "with_weights",
]
