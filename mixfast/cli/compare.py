"""`mixfast compare`: sl, ssl+sl and mix on the same data, fractions and seeds."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from mixfast import compare, experiment
from mixfast.cli.args import UsageError, add_run_arguments, config_from_args
from mixfast.compare import holds_run
from mixfast.data import load_dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare",
        help="SL vs SSL+SL vs MixTraining",
        description="Run sl, ssl+sl and mix on the same data, fractions and seeds; print a table, "
        "write DIR/compare.json and DIR/compare.png. " + compare.PROTOCOL,
    )
    add_run_arguments(parser)
    add_compare_arguments(parser)
    parser.set_defaults(handler=cmd_compare)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compare")
    group.add_argument(
        "--fractions", type=float, nargs="+", default=[0.1, 1.0], help="labeled fractions"
    )
    group.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds")
    group.add_argument(
        "--pipelines",
        nargs="+",
        choices=compare.PIPELINES,
        default=list(compare.PIPELINES),
        help="pipelines",
    )
    group.add_argument(
        "--force",
        action="store_true",
        help="run again over an existing DIR/compare.json, replacing its run folders",
    )
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in compare.COMPARE_DEFAULTS.items() if k in known})


def check_compare_args(args: argparse.Namespace) -> Path:
    for fraction in args.fractions:
        if not 0.0 < fraction <= 1.0:
            raise UsageError(f"--fractions values must be in (0, 1], got {fraction}")
    for flag, values in (("--fractions", args.fractions), ("--seeds", args.seeds)):
        if len(set(values)) != len(values):
            raise UsageError(f"{flag} has repeated values: {values}")
    if len(set(args.pipelines)) != len(args.pipelines):
        raise UsageError(f"--pipelines has repeated values: {args.pipelines}")
    if args.per_class is not None:
        raise UsageError("compare takes --fractions, not --per-class")
    report = Path(args.out) / "compare.json"
    if report.exists() and not (args.resume or args.force):
        raise UsageError(
            f"{report} exists; refusing to overwrite it. Pass --resume to continue that "
            "comparison (finished runs are reused), --force to run it again, or another --out"
        )
    if args.resume and args.force:
        raise UsageError("pass --resume or --force, not both")
    held = [
        d
        for d in compare.run_dirs(args.out, args.fractions, args.seeds, args.pipelines)
        if holds_run(d)
    ]
    if held and not (args.resume or args.force):
        raise UsageError(
            f"{held[0]} already holds a run ({len(held)} of this comparison's run folders do); "
            "pass --resume to reuse them, --force to replace them, or another --out"
        )
    return report


def cmd_compare(args: argparse.Namespace) -> Callable[[], int]:
    """Set up and validate everything (errors exit 2); return the runs to do."""
    report_path = check_compare_args(args)
    base = config_from_args(args)
    splits = load_dataset(args.dataset, args.data_dir, size=args.img_size, seed=args.seed)
    first = experiment.prepare_data(splits, args, fraction=args.fractions[0])
    experiment.model_kwargs(args, first)  # checks the patch grid (and warns) before any work
    settings = {
        "dataset": args.dataset,
        "fractions": args.fractions,
        "seeds": args.seeds,
        "pipelines": args.pipelines,
        "config": {k: compare.jsonable(v) for k, v in dataclasses.asdict(base).items()},
        "data": experiment.data_settings(args, first, args.fractions[0]),
        "device": compare.describe_device(getattr(base, "device", None)),
        "command": "mixfast " + " ".join(sys.argv[1:]),
    }
    print(compare.PROTOCOL, file=sys.stderr)

    def work() -> int:
        runs = compare.run_all(args, base, splits, settings, report_path)
        compare.print_table(runs, settings)
        plot_path = report_path.with_suffix(".png")
        compare.plot(runs, plot_path, settings)
        print(f"\nwrote {report_path} and {plot_path}")
        return 0

    return work
