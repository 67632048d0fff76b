"""The flags of `train` and `compare`, generated from the fields of the run's settings
(TrainConfig, ModelConfig, DataConfig: one flag per field, their defaults the fields'), and
`--config FILE.yaml` defaults. `spec_from_args` turns parsed flags back into a validated
RunSpec. Library errors name settings as {name}; `flag` spells them as these flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from mixfast.budget import (
    AUTO,
    AUTO_SETTINGS,
    BATCH_CAP,
    MIN_EPOCH_STEPS,
    MIN_SL_EPOCHS,
    SL_STEPS,
)
from mixfast.data import DATASETS, REGIMES, SSL_POOLS
from mixfast.model.mae import SL_VIEWS
from mixfast.model.weights import HEAD_RULES
from mixfast.schedule import PIPELINES, TRANSITIONS
from mixfast.train.config import FINETUNE_FROM, NONFINITE, TrainConfig
from mixfast.train.settings import DataConfig, ModelConfig, RunSpec


class UsageError(ValueError):
    """Bad configuration found before any work: exit code 2."""


def flag(name: str) -> str:
    """An API setting name as its flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def _resume_value(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', got {text!r}")
    return text


def _int_or_auto(text: str | int) -> int | str:
    """An integer, or "auto" (sized from the data: mixfast/budget.py)."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an integer or 'auto', got {text!r}") from None


def auto_flag(help: str) -> dict[str, Any]:
    """The FlagSpecs entry of a budget setting that defaults to "auto"."""
    return dict(type=_int_or_auto, default=AUTO, metavar="N|auto", help=help)


AUTO_RULE = (
    f"auto (the default) sizes --batch-size, --ssl-epochs and --sl-epochs from the data: "
    f"batch <= {BATCH_CAP} keeping >= {MIN_EPOCH_STEPS} steps per epoch, >= {SL_STEPS} SL "
    f"optimizer steps and >= {MIN_SL_EPOCHS} SL epochs, SSL half of that; the run summary "
    "prints what it chose"
).replace("%", "%%")


def switch(name: str, help: str) -> dict[str, Any]:
    """The FlagSpecs entry of an on/off setting: `name` turns it on."""
    return dict(switches=[(name, dict(action="store_true", help=help))])


# Per field, what differs from `--name VALUE` with the field's type and default: extra
# argparse kwargs (help, choices, nargs, ...), or "switches", a list of (flag, kwargs) that
# set the field (in a mutually exclusive group when "exclusive"), or None: no flag.
FlagSpecs = dict[str, Any]

TRAIN_FLAGS: FlagSpecs = {
    "augment": None,  # the callable comes from --augment (DataConfig)
    "pretrained_weights": None,  # set by the run from --pretrained / --pretrained-path
    "compile_backend": None,
    "pipeline": dict(choices=PIPELINES),
    "transition": dict(choices=TRANSITIONS),
    "sl_view": dict(choices=SL_VIEWS),
    "nonfinite": dict(choices=NONFINITE),
    "finetune_from": dict(
        choices=FINETUNE_FROM,
        help="the phase that opens the fine-tune optimizer (sl: the mix phase continues the "
        "pre-train one)",
    ),
    "compile": dict(
        switches=[
            ("--no-compile", dict(action="store_const", const=False)),
            (
                "--compile",
                dict(
                    action="store_const",
                    const=True,
                    help="torch.compile the step on CPU too (default: on CUDA only)",
                ),
            ),
        ]
    ),
    "amp": dict(switches=[("--no-amp", dict(action="store_false"))]),
    "cuda_graph": switch(
        "--cuda-graph",
        "capture each phase's whole step in a CUDA graph and replay it (CUDA, "
        "one process, no accumulation; otherwise steps eagerly with a warning)",
    ),
    "tensorboard": switch(
        "--tensorboard",
        "also write TensorBoard event files to OUT/tensorboard/: scalars per "
        "epoch and per --log-every steps, the reconstruction grids, the config "
        "(needs: pip install tensorboard)",
    ),
    "recon_every": dict(
        metavar="N",
        help="draw OUT/recon-epochNNN.png (MAE reconstructions of 8 validation images under "
        "fixed masks) every N SSL/mix epochs, and OUT/recon-last.png at the end; 0: none "
        "(default: %(default)s)",
    ),
    "progress": dict(switches=[("--no-progress", dict(action="store_false"))]),
    "grad_checkpointing": switch(
        "--grad-checkpointing",
        "keep no encoder block activations for the backward: recompute them "
        "there (less memory, about a third more compute)",
    ),
    "fsdp": switch(
        "--fsdp",
        "shard weights, gradients and AdamW state over the processes (FSDP2; gloo on CPU, "
        "NCCL on CUDA; outside torchrun a group of one); checkpoints become sharded",
    ),
    "resume": dict(
        nargs="?",
        const=True,
        type=_resume_value,
        metavar="auto",
        help="continue from OUT/last.pt; --resume auto: continue when it exists, else start "
        "(one command line for every torchrun --max-restarts restart)",
    ),
    "save_every": dict(
        metavar="N",
        help="also save OUT/last.pt every N optimizer steps, mid-epoch (default: epoch ends)",
    ),
    "task_weights": dict(type=float, nargs="+"),
    "mix_ratio": dict(help="rho in [0, 1]"),
    "ssl_share": dict(
        help="SSL sub-batch of a mix step as a share of the batch, in (0, 1] (the SSL passes "
        "it does not make go to the SSL phase)"
    ),
    "batch_size": auto_flag("per device, or auto (see --sl-epochs)"),
    "ssl_epochs": auto_flag("SSL epochs (before and in a mix phase), or auto (see --sl-epochs)"),
    "sl_epochs": auto_flag(f"SL epochs (in and after a mix phase), or {AUTO_RULE}"),
    "blr": dict(help="fine-tune base lr per 256"),
    "ssl_blr": dict(help="pre-train base lr per 256"),
    "out": dict(help="run folder (config, metrics, checkpoint)"),
    "stop_after": dict(help=argparse.SUPPRESS),
    # timm's fine-tune recipe on the SL images (docs/recipe.md); SSL images stay clean
    "mixup": dict(metavar="ALPHA", help="Mixup alpha, soft targets (0: off; MAE: 0.8)"),
    "cutmix": dict(metavar="ALPHA", help="CutMix alpha (0: off; MAE: 1.0)"),
    "aa": dict(metavar="SPEC", help="RandAugment spec, e.g. rand-m9-mstd0.5-inc1 (default: off)"),
    "reprob": dict(metavar="P", help="random erasing probability per image (MAE: 0.25)"),
    "model_ema": switch(
        "--model-ema",
        "also keep an EMA of the weights from the first mix/SL step; validation and test "
        "read both, the EMA's top-1 is the run's",
    ),
    "model_ema_decay": dict(metavar="DECAY", help="EMA decay in (0, 1) (default: %(default)s)"),
}

MODEL_FLAGS: FlagSpecs = {
    "model": dict(help="timm ViT name (default: %(default)s)"),
    "patch_size": dict(help="patch size; default: the largest of 16/8/7/4 giving >= 16 patches"),
    "depth": dict(help="encoder blocks (override)"),
    "embed_dim": dict(help="encoder width (override)"),
    "num_heads": dict(help="attention heads (override)"),
    "decoder_dim": dict(help="MAE decoder width"),
    "decoder_depth": dict(help="MAE decoder blocks"),
    "drop_path": dict(
        metavar="RATE", help="stochastic depth rate of the encoder (0: off; MAE fine-tune: 0.1)"
    ),
    "pretrained": switch(
        "--pretrained",
        "start from --model's pretrained weights (a tag allowed: "
        "vit_base_patch16_224.mae) through timm's loader and cache; offline they "
        "load only when cached; adapted as --pretrained-path's (docs/weights.md)",
    ),
    "pretrained_path": dict(
        metavar="FILE",
        help="start from the weights in FILE: an MAE main_pretrain.py checkpoint or released "
        "encoder, a timm state_dict (.pth, .safetensors), a mixfast last.pt or exported "
        "encoder; position and patch embedding, input channels and heads are adapted to the "
        "run, anything else that differs is an error (docs/weights.md)",
    ),
    "pretrained_head": dict(
        choices=HEAD_RULES,
        help="which heads of the weights load: auto, those recorded with the run's class names "
        "(mixfast checkpoints); keep, any whose class count matches (timm's and MAE's rule); "
        "reset, none; a head that does not load starts fresh (default: %(default)s)",
    ),
}

DATA_FLAGS: FlagSpecs = {
    "dataset": dict(
        help=f"one of {', '.join(DATASETS)}; a folder (ROOT/<class>/<image>, or ROOT/train "
        "and ROOT/val), a .tar of class folders or a folder of tar shards, read with timm's "
        "readers; wds/FOLDER (tar shards) or hfds/FOLDER (a Hugging Face dataset saved to "
        "disk) (default: %(default)s)"
    ),
    "data_dir": dict(
        help="dataset root; fashion-mnist also looks at $MIXFAST_FASHION_MNIST_DIR and dpkg"
    ),
    "img_size": dict(help="input size; default: the data's"),
    "fraction": dict(help="labeled fraction per class"),
    "per_class": dict(help="labeled images per class"),
    "train_limit": dict(help="cap on training images"),
    "test_limit": dict(help="cap on test images"),
    "regime": dict(
        choices=REGIMES,
        help="data-limited: SSL on the labeled images only; semi-supervised: SSL on every "
        "training image outside validation, labels on --fraction (default: %(default)s)",
    ),
    "val_fraction": dict(
        help="validation split carved from the training images, per class (default: 0.1)"
    ),
    "val_max": dict(help="at most this many validation images"),
    "task": dict(
        action="append",
        default=None,
        metavar="SPEC",
        help="a supervised task (repeat for several: task k trains head k): key=value pairs "
        "name=, classes=A-B or A+B, groups=FILE.json (class -> group), fraction=, dataset=, "
        "data_dir=; default: one task, the dataset's classes",
    ),
    "data_mode": dict(
        exclusive=True,
        switches=[
            (
                "--stream",
                dict(
                    action="store_const",
                    const="stream",
                    help="decode image files in DataLoader workers (--num-workers) every epoch; "
                    "default: when they exceed --memory-cap-gb decoded",
                ),
            ),
            (
                "--in-memory",
                dict(
                    action="store_const",
                    const="memory",
                    help="decode image files into memory once (default: when they fit "
                    "--memory-cap-gb)",
                ),
            ),
        ],
    ),
    "skip_bad": switch(
        "--skip-bad",
        "decode every image file once before training and leave out those that "
        "do not decode (counted, and named in DIR/data.json); default: such a file "
        "stops the run with an error naming it",
    ),
    "memory_cap_gb": dict(
        help="image files larger than this, decoded, are streamed (default: %(default)s)"
    ),
    "augment": dict(
        action=argparse.BooleanOptionalAction,
        help="on-device random resized crop + flip (default: off; it cost accuracy at the "
        "short budgets measured, benchmarks/results/fashion-mnist-recipe-cpu-2026-12-01/)",
    ),
    "augment_scale": dict(
        metavar="MIN",
        help="--augment's crops cover MIN to all of the image's area (default: %(default)s)",
    ),
}

VALUE_TYPES = {"float": float, "int": int, "str": str}


def _value_type(field: dataclasses.Field) -> type:
    """int / float / str from the field's annotation (`float | None` -> float)."""
    annotation = str(field.type).split("|")[0].strip()
    return VALUE_TYPES.get(annotation, str)


def add_dataclass_arguments(
    group: argparse._ArgumentGroup, settings: type, specs: FlagSpecs
) -> None:
    """One flag per field of the dataclass `settings` (see FlagSpecs); defaults are the
    fields' (so --config can set them)."""
    defaults = settings()
    for field in dataclasses.fields(settings):
        name = field.name
        if name in specs and specs[name] is None:
            continue
        spec = dict(specs.get(name, {}))
        default = getattr(defaults, name)
        if "switches" in spec:
            target = group.add_mutually_exclusive_group() if spec.get("exclusive") else group
            for switch, kwargs in spec.pop("switches"):
                target.add_argument(switch, dest=name, **kwargs)
            group.set_defaults(**{name: default})
            continue
        kwargs = {"default": default, **spec}
        if "action" not in kwargs and "type" not in kwargs and "choices" not in kwargs:
            kwargs["type"] = _value_type(field)
        group.add_argument(flag(name), **kwargs)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per TrainConfig field."""
    add_dataclass_arguments(parser.add_argument_group("training"), TrainConfig, TRAIN_FLAGS)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    add_dataclass_arguments(parser.add_argument_group("model"), ModelConfig, MODEL_FLAGS)
    data = parser.add_argument_group("data")
    add_dataclass_arguments(data, DataConfig, DATA_FLAGS)
    data.add_argument(
        "--ssl-pool", choices=tuple(SSL_POOLS), default=None, help=argparse.SUPPRESS
    )  # the older name of --regime: same = data-limited, all = semi-supervised
    parser.add_argument(
        "--config", default=None, metavar="FILE.yaml", help="defaults; flags override"
    )


def _fields_of(
    settings: type, args: argparse.Namespace, specs: FlagSpecs | None = None
) -> dict[str, Any]:
    """The fields of `settings` that are flags (see FlagSpecs) and were parsed into `args`."""
    names = {f.name for f in dataclasses.fields(settings)}
    names -= {name for name, spec in (specs or {}).items() if spec is None}
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags (fields absent from `args` or "auto" keep their
    defaults; spec_from_args says which are "auto")."""
    fields = _fields_of(TrainConfig, args, TRAIN_FLAGS)
    sized = {name for name in AUTO_SETTINGS if fields.get(name) == AUTO}
    config = TrainConfig(**{name: v for name, v in fields.items() if name not in sized})
    config.validate()
    return config


def auto_settings(args: argparse.Namespace) -> tuple[str, ...]:
    """The budget settings left at "auto" in parsed flags."""
    return tuple(name for name in AUTO_SETTINGS if getattr(args, name, None) == AUTO)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The validated RunSpec of parsed `train` / `compare` flags."""
    data = _fields_of(DataConfig, args)
    data["task"] = tuple(data.get("task") or ())
    if getattr(args, "ssl_pool", None):
        data["regime"] = SSL_POOLS[args.ssl_pool]
    spec = RunSpec(DataConfig(**data), ModelConfig(**_fields_of(ModelConfig, args)))
    spec = dataclasses.replace(spec, train=config_from_args(args), auto=auto_settings(args))
    spec.validate()
    return spec


def load_config_defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """YAML mapping of option names (dashes or underscores) to values, checked against parser."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: want a mapping of option: value")
    actions = {a.dest: a for a in parser._actions}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("config", "help", "handler"):
            raise UsageError(f"--config {path}: unknown option {key!r}")
        defaults[dest] = _typed(actions[dest], value, f"--config {path}: {key}")
    return defaults


def _typed(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value checked as its flag would check it: switches take true/false, lists take
    lists, numbers take numbers (not strings, not booleans), choices their choices."""
    if value is None:
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):  # the setting's value (amp: false), never a string
            raise UsageError(f"{where} must be true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not value:
            raise UsageError(f"{where} must be a non-empty list, got {value!r}")
        return [_scalar(action, item, where) for item in value]
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    kind = action.type or str
    if kind is _int_or_auto:
        kind = int if value != AUTO else _int_or_auto
    if isinstance(value, bool) or (kind in (int, float) and not isinstance(value, int | float)):
        raise UsageError(f"{where} must be a {kind.__name__}, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise UsageError(f"{where} must be an integer, got {value!r}")
    value = kind(value)
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where} must be one of {list(action.choices)}, got {value!r}")
    return value
