"""The `mixfast` command: train, compare, profile, data, bench, info (one module per command).

Exit codes: 0 success, 2 bad usage (argparse errors, and any ValueError raised while the run is
being set up, before training starts), 1 failure, 130 interrupted (Ctrl-C / SIGINT; during
training after a checkpoint), 143 SIGTERM during training (after a checkpoint). Library errors
name settings as {name}; they are printed here with flag names (`--batch-size`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mixfast.checks import SettingError
from mixfast.cli import bench, compare, data, info, profile, train
from mixfast.cli.args import UsageError, flag, load_config_defaults
from mixfast.ops._backend import requested_backend

__all__ = ["UsageError", "build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixfast", description="MixTraining (MAE + supervised, mixed) for Vision Transformers"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (train, compare, profile, data, bench, info):
        command.add_parser(sub)
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        requested_backend()  # MIXFAST_BACKEND is a setting too
        work = args.handler(args)
    except ValueError as exc:
        message = exc.render(flag) if isinstance(exc, SettingError) else str(exc)
        print(f"mixfast {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixfast {args.command}: interrupted before training started", file=sys.stderr)
        return 130
    try:
        return work()
    except KeyboardInterrupt:  # the trainer saved a checkpoint first (SIGINT at a step)
        print(f"mixfast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the command's failure exit code
        import traceback

        traceback.print_exc()
        print(f"mixfast {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
