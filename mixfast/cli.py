"""The `mixfast` command: train, compare, bench, info.

Exit codes: 0 success, 2 bad usage (argparse errors, and any ValueError raised while the run is
being set up, before training starts), 1 failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixfast.data import DATASETS, SSL_POOLS, TrainingData

DEFAULT_MODEL = "vit_tiny_patch16_224"
MIN_PATCHES = 16
OP_KEYS = ("attention", "patch_embed", "masking")


class UsageError(ValueError):
    """Bad configuration found before any work: exit code 2."""


# --------------------------------------------------------------------------------------------
# Arguments


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless the trainer's add_train_arguments already defined it."""
    if not any(flag in parser._option_string_actions for flag in flags):
        parser.add_argument(*flags, **kwargs)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    _add(group, "--model", default=DEFAULT_MODEL, help="timm ViT name (default: %(default)s)")
    _add(group, "--img-size", type=int, default=None, help="input size; default: the data's size")
    _add(
        group,
        "--patch-size",
        type=int,
        default=None,
        help="patch size; default: the largest of 16/8/7/4 giving >= 16 patches",
    )
    _add(group, "--depth", type=int, default=None, help="encoder blocks (override)")
    _add(group, "--embed-dim", type=int, default=None, help="encoder width (override)")
    _add(group, "--num-heads", type=int, default=None, help="attention heads (override)")
    _add(group, "--decoder-dim", type=int, default=None, help="MAE decoder width")
    _add(group, "--decoder-depth", type=int, default=None, help="MAE decoder blocks")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    _add(
        group, "--dataset", choices=DATASETS, default="fashion-mnist", help="(default: %(default)s)"
    )
    _add(
        group,
        "--data-dir",
        default=None,
        help="dataset root; fashion-mnist also looks at $MIXFAST_FASHION_MNIST_DIR and dpkg",
    )
    _add(group, "--fraction", type=float, default=1.0, help="labeled fraction per class")
    _add(group, "--per-class", type=int, default=None, help="labeled images per class instead")
    _add(group, "--train-limit", type=int, default=None, help="cap on training images (stratified)")
    _add(group, "--test-limit", type=int, default=None, help="cap on test images (stratified)")
    _add(
        group,
        "--ssl-pool",
        choices=SSL_POOLS,
        default="same",
        help="SSL on the labeled images (same) or on every training image (all, two-stream)",
    )
    _add(group, "--no-augment", action="store_true", help="no random resized crop / flip")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from mixfast.trainer import add_train_arguments
    except ImportError as exc:  # keep `info` and `bench` usable from a broken install
        parser.set_defaults(import_error=exc)
    else:
        add_train_arguments(parser)
    add_model_arguments(parser)
    add_data_arguments(parser)
    _add(parser, "--config", default=None, metavar="FILE.yaml", help="defaults; flags override")


def build_parser() -> argparse.ArgumentParser:
    from mixfast import compare

    parser = argparse.ArgumentParser(
        prog="mixfast", description="MixTraining (MAE + supervised, mixed) for Vision Transformers"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train one pipeline", description="Train one pipeline.")
    add_run_arguments(train)
    train.set_defaults(handler=cmd_train)

    cmp = sub.add_parser(
        "compare",
        help="SL vs SSL+SL vs MixTraining",
        description="Run sl, ssl+sl and mix on the same data, fractions and seeds; print a table, "
        "write DIR/compare.json and DIR/compare.png. " + compare.PROTOCOL,
    )
    add_run_arguments(cmp)
    compare.add_compare_arguments(cmp)
    cmp.set_defaults(handler=compare.cmd_compare)

    bench = sub.add_parser("bench", help="run the benchmarks", description="Run pytest-benchmark.")
    bench.add_argument("--path", default=None, help="benchmarks directory")
    bench.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    bench.set_defaults(handler=cmd_bench)

    info = sub.add_parser(
        "info", help="versions, device, build", description="Print what a bug report needs."
    )
    info.set_defaults(handler=cmd_info)
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def load_config_defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """YAML mapping of option names (dashes or underscores) to values, checked against parser."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: want a mapping of option: value")
    known = {a.dest for a in parser._actions}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known or dest in ("config", "help", "handler"):
            raise UsageError(f"--config {path}: unknown option {key!r}")
        defaults[dest] = value
    return defaults


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        sub = subparser(parser, args.command)
        try:
            sub.set_defaults(**load_config_defaults(args.config, sub))
        except UsageError as exc:
            sub.error(str(exc))
        args = parser.parse_args(argv)
    return args


# --------------------------------------------------------------------------------------------
# Building a run


def default_patch_size(img_size: int) -> int:
    if img_size >= 128:
        return 16
    for patch in (8, 7, 4):
        if img_size % patch == 0 and (img_size // patch) ** 2 >= MIN_PATCHES:
            return patch
    return 4 if img_size % 4 == 0 else 1


def check_patch_grid(img_size: int, patch_size: int) -> None:
    if patch_size < 1 or img_size % patch_size:
        raise UsageError(f"--patch-size {patch_size} must divide --img-size {img_size}")
    patches = (img_size // patch_size) ** 2
    if patches < MIN_PATCHES:
        warnings.warn(
            f"patch grid too coarse: {img_size}x{img_size} images with patch {patch_size} give "
            f"{patches} patches (< {MIN_PATCHES}); MAE masking 75% leaves too little to see. "
            "Use a smaller --patch-size.",
            stacklevel=2,
        )


def load_data(args: argparse.Namespace, *, fraction: float | None = None) -> TrainingData:
    from mixfast.data import load_dataset

    if args.img_size is not None and args.img_size < 4:
        raise UsageError(f"--img-size must be >= 4, got {args.img_size}")
    splits = load_dataset(args.dataset, args.data_dir, size=args.img_size, seed=args.seed)
    return prepare_data(splits, args, fraction=fraction)


def prepare_data(
    splits, args: argparse.Namespace, *, fraction: float | None = None
) -> TrainingData:
    from mixfast.data import prepare_training_data

    fraction = args.fraction if fraction is None else fraction
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--fraction must be in (0, 1], got {fraction}")
    return prepare_training_data(
        splits,
        fraction=fraction,
        per_class=args.per_class,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        ssl_pool=args.ssl_pool,
        seed=args.seed,
    )


def model_kwargs(args: argparse.Namespace, data: TrainingData) -> dict[str, Any]:
    channels, img_size, _ = data.image_shape
    patch_size = args.patch_size or default_patch_size(img_size)
    check_patch_grid(img_size, patch_size)
    kwargs: dict[str, Any] = dict(
        img_size=img_size, patch_size=patch_size, in_chans=channels, num_classes=data.num_classes
    )
    for name in ("depth", "embed_dim", "num_heads", "decoder_dim", "decoder_depth"):
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def build_model(args: argparse.Namespace, data: TrainingData, seed: int):
    import torch

    from mixfast import create_model

    torch.manual_seed(seed)  # every pipeline of one seed starts from the same weights
    return create_model(args.model, **model_kwargs(args, data))


def with_augment(config, data: TrainingData, args: argparse.Namespace):
    """Hand the trainer the on-device batch augmentation if its TrainConfig takes one."""
    names = {f.name for f in dataclasses.fields(config)}
    if args.no_augment or "augment" not in names:
        return config
    return dataclasses.replace(config, augment=data.augment(seed=config.seed))


def data_settings(args: argparse.Namespace, data: TrainingData, fraction: float) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "fraction": fraction,
        "per_class": args.per_class,
        "train_limit": args.train_limit,
        "test_limit": args.test_limit,
        "ssl_pool": args.ssl_pool,
        "augment": not args.no_augment,
        "labeled": len(data.sl_data),
        "test": len(data.val_data),
        "ssl_images": len(data.sl_data if data.ssl_data is None else data.ssl_data),
        "image_shape": list(data.image_shape),
        "model": args.model,
        "model_kwargs": model_kwargs(args, data),
    }


def write_json(path: Path, obj: Any) -> None:
    """Atomic write: a crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Commands


def cmd_train(args: argparse.Namespace) -> Callable[[], int]:
    """Set up (errors here exit 2), then return the work to run (errors there exit 1)."""
    from mixfast.trainer import config_from_args, train

    config = config_from_args(args)
    data = load_data(args)
    model = build_model(args, data, config.seed)
    config = with_augment(config, data, args)
    print(f"mixfast train: {config.pipeline} on {args.dataset}: {data.summary()}", file=sys.stderr)

    def work() -> int:
        result = train(config, model, data.ssl_data, data.sl_data, data.val_data).to_dict()
        write_json(Path(config.out) / "data.json", data_settings(args, data, args.fraction))
        print(f"top-1 {100 * result['top1']:.2f}%  wall {result['wall_s']:.1f}s  -> {config.out}")
        return 0

    return work


def cmd_bench(args: argparse.Namespace) -> Callable[[], int]:
    if args.path:
        candidates = [Path(args.path)]
    else:
        repo = Path(__file__).resolve().parents[1]
        candidates = [Path.cwd() / "benchmarks", repo / "benchmarks"]
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        raise UsageError(
            f"no benchmarks directory at {', '.join(map(str, candidates))}; pass --path DIR"
        )
    extra = [a for a in args.pytest_args if a != "--"]
    command = [sys.executable, "-m", "pytest", str(path), "--benchmark-only", "-q"]
    command += ["-o", "python_files=bench_*.py test_*.py", *extra]

    def work() -> int:
        print("mixfast bench:", " ".join(command), file=sys.stderr)
        return 0 if subprocess.run(command).returncode == 0 else 1

    return work


def cmd_info(args: argparse.Namespace) -> Callable[[], int]:
    def work() -> int:
        for key, value in info_lines():
            print(f"{key:<27} {value}")
        return 0

    return work


def info_lines() -> list[tuple[str, str]]:
    import torch

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
        from mixfast import build_info

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
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # noqa: BLE001
        CUDA_HOME = None
    return str(CUDA_HOME or os.environ.get("CUDA_HOME") or "not set")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if getattr(args, "import_error", None) is not None:
        print(
            f"mixfast {args.command}: cannot import the trainer: {args.import_error}",
            file=sys.stderr,
        )
        return 1
    try:
        work = args.handler(args)
    except ValueError as exc:
        print(f"mixfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return work()
    except KeyboardInterrupt:
        print(f"mixfast {args.command}: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command's failure exit code
        import traceback

        traceback.print_exc()
        print(f"mixfast {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
