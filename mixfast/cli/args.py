"""The flags of `train` and `compare`: training flags generated from TrainConfig's fields, model
and data flags, and `--config FILE.yaml` defaults. Library errors name settings as {name};
`flag` spells them as these flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from mixfast.data import DATASETS, REGIMES, SSL_POOLS
from mixfast.data.files import MEMORY_CAP_GB
from mixfast.data.training import CROP_SCALE
from mixfast.experiment import DEFAULT_MODEL
from mixfast.model.mae import SL_VIEWS
from mixfast.schedule import PIPELINES, TRANSITIONS
from mixfast.train.config import FINETUNE_FROM, NONFINITE, TrainConfig


class UsageError(ValueError):
    """Bad configuration found before any work: exit code 2."""


def flag(name: str) -> str:
    """An API setting name as its flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


# TrainConfig fields that are not flags, and the flags that differ from `--name VALUE`.
NOT_FLAGS = ("augment", "compile_backend")
CHOICES = {
    "pipeline": PIPELINES,
    "transition": TRANSITIONS,
    "sl_view": SL_VIEWS,
    "nonfinite": NONFINITE,
    "finetune_from": FINETUNE_FROM,
}
SWITCHES = {  # field -> (flag, argparse kwargs), or a list of them
    "compile": [
        ("--no-compile", dict(action="store_const", const=False)),
        (
            "--compile",
            dict(
                action="store_const",
                const=True,
                help="torch.compile the step on CPU too (default: on CUDA only)",
            ),
        ),
    ],
    "amp": ("--no-amp", dict(action="store_false")),
    "cuda_graph": (
        "--cuda-graph",
        dict(
            action="store_true",
            help="capture each phase's whole step in a CUDA graph and replay it (CUDA, one "
            "process, no accumulation; otherwise steps eagerly with a warning)",
        ),
    ),
    "progress": ("--no-progress", dict(action="store_false")),
    "resume": ("--resume", dict(action="store_true", help="continue from OUT/last.pt")),
}
HELP = {
    "mix_ratio": "rho in [0, 1]",
    "ssl_share": "SSL sub-batch of a mix step as a share of the batch, in (0, 1] (the SSL "
    "passes it does not make go to the SSL phase)",
    "batch_size": "per device",
    "blr": "fine-tune base lr per 256",
    "ssl_blr": "pre-train base lr per 256",
    "finetune_from": "the phase that opens the fine-tune optimizer (sl: the mix phase "
    "continues the pre-train one)",
    "out": "run folder (config, metrics, checkpoint)",
    "stop_after": argparse.SUPPRESS,
}
VALUE_TYPES = {"float": float, "int": int, "str": str}


def _value_type(field: dataclasses.Field) -> type:
    """int / float / str from the field's annotation (`float | None` -> float)."""
    annotation = str(field.type).split("|")[0].strip()
    return VALUE_TYPES.get(annotation, str)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per TrainConfig field; defaults are TrainConfig's (so --config can set them)."""
    defaults = TrainConfig()
    group = parser.add_argument_group("training")
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        if name in NOT_FLAGS:
            continue
        if name in SWITCHES:
            switches = SWITCHES[name]
            for switch, kwargs in switches if isinstance(switches, list) else [switches]:
                group.add_argument(switch, dest=name, **kwargs)
            continue
        kwargs: dict[str, Any] = dict(default=getattr(defaults, name))
        if name in HELP:
            kwargs["help"] = HELP[name]
        if name in CHOICES:
            kwargs["choices"] = CHOICES[name]
        elif name == "task_weights":
            kwargs.update(type=float, nargs="+")
        else:
            kwargs["type"] = _value_type(field)
        group.add_argument(flag(name), **kwargs)
    parser.set_defaults(**{name: getattr(defaults, name) for name in SWITCHES})
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags (fields absent from `args` keep their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_FLAGS)
    config = TrainConfig(**{n: getattr(args, n) for n in names if hasattr(args, n)})
    config.validate()
    return config


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=DEFAULT_MODEL, help="timm ViT name (default: %(default)s)"
    )
    group.add_argument("--img-size", type=int, default=None, help="input size; default: the data's")
    group.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="patch size; default: the largest of 16/8/7/4 giving >= 16 patches",
    )
    group.add_argument("--depth", type=int, default=None, help="encoder blocks (override)")
    group.add_argument("--embed-dim", type=int, default=None, help="encoder width (override)")
    group.add_argument("--num-heads", type=int, default=None, help="attention heads (override)")
    group.add_argument("--decoder-dim", type=int, default=None, help="MAE decoder width")
    group.add_argument("--decoder-depth", type=int, default=None, help="MAE decoder blocks")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="fashion-mnist",
        help=f"one of {', '.join(DATASETS)}; a folder (ROOT/<class>/<image>, or ROOT/train "
        "and ROOT/val), a .tar of class folders or a folder of tar shards, read with timm's "
        "readers; wds/FOLDER (tar shards) or hfds/FOLDER (a Hugging Face dataset saved to "
        "disk) (default: %(default)s)",
    )
    group.add_argument(
        "--data-dir",
        default=None,
        help="dataset root; fashion-mnist also looks at $MIXFAST_FASHION_MNIST_DIR and dpkg",
    )
    group.add_argument("--fraction", type=float, default=1.0, help="labeled fraction per class")
    group.add_argument("--per-class", type=int, default=None, help="labeled images per class")
    group.add_argument("--train-limit", type=int, default=None, help="cap on training images")
    group.add_argument("--test-limit", type=int, default=None, help="cap on test images")
    group.add_argument(
        "--regime",
        choices=REGIMES,
        default="data-limited",
        help="data-limited: SSL on the labeled images only; semi-supervised: SSL on every "
        "training image outside validation, labels on --fraction (default: %(default)s)",
    )
    group.add_argument(
        "--ssl-pool", choices=tuple(SSL_POOLS), default=None, help=argparse.SUPPRESS
    )  # the older name: same = data-limited, all = semi-supervised
    group.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation split carved from the training images, per class (default: 0.1)",
    )
    group.add_argument(
        "--val-max", type=int, default=5000, help="at most this many validation images"
    )
    group.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="SPEC",
        help="a supervised task (repeat for several: task k trains head k): key=value pairs "
        "name=, classes=A-B or A+B, groups=FILE.json (class -> group), fraction=, dataset=, "
        "data_dir=; default: one task, the dataset's classes",
    )
    storage = group.add_mutually_exclusive_group()
    storage.add_argument(
        "--stream",
        dest="data_mode",
        action="store_const",
        const="stream",
        default="auto",
        help="decode image files in DataLoader workers (--num-workers) every epoch; default: "
        "when they exceed --memory-cap-gb decoded",
    )
    storage.add_argument(
        "--in-memory",
        dest="data_mode",
        action="store_const",
        const="memory",
        help="decode image files into memory once (default: when they fit --memory-cap-gb)",
    )
    group.add_argument(
        "--skip-bad",
        action="store_true",
        help="decode every image file once before training and leave out those that do not "
        "decode (counted, and named in DIR/data.json); default: such a file stops the run "
        "with an error naming it",
    )
    group.add_argument(
        "--memory-cap-gb",
        type=float,
        default=MEMORY_CAP_GB,
        help="image files larger than this, decoded, are streamed (default: %(default)s)",
    )
    group.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="on-device random resized crop + flip (default: off; it cost accuracy at the "
        "short budgets measured, benchmarks/results/fashion-mnist-recipe-cpu-2026-12-01/)",
    )
    group.add_argument(
        "--augment-scale",
        type=float,
        default=CROP_SCALE,
        metavar="MIN",
        help="--augment's crops cover MIN to all of the image's area (default: %(default)s)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument(
        "--config", default=None, metavar="FILE.yaml", help="defaults; flags override"
    )


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
    if isinstance(value, bool) or (kind in (int, float) and not isinstance(value, int | float)):
        raise UsageError(f"{where} must be a {kind.__name__}, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise UsageError(f"{where} must be an integer, got {value!r}")
    value = kind(value)
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where} must be one of {list(action.choices)}, got {value!r}")
    return value
