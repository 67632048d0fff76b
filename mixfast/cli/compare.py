"""`mixfast compare`: sl, ssl+sl and mix on the same data, fractions and seeds."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from mixfast import compare, experiment, report
from mixfast.cli.args import UsageError, add_run_arguments, spec_from_args
from mixfast.compare import holds_run
from mixfast.data import REGIMES
from mixfast.provenance import provenance
from mixfast.schedule import PIPELINES
from mixfast.train.distributed import env_world


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
        "--fractions",
        type=fraction_arg,
        nargs="+",
        default=[0.1, 1.0],
        metavar="FRACTION[:N]",
        help="labeled fractions; FRACTION:N runs only the first N of --seeds there (fewer "
        "seeds where runs are dear: such a cell reports its numbers and no verdict below "
        "3 seeds)",
    )
    group.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds")
    group.add_argument(
        "--pipelines",
        nargs="+",
        choices=PIPELINES,
        default=list(PIPELINES),
        help="pipelines",
    )
    group.add_argument(
        "--regimes",
        nargs="+",
        choices=REGIMES,
        default=["data-limited"],
        help="data-limited and/or semi-supervised (default: %(default)s)",
    )
    group.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="epoch budgets: each pipeline runs with ssl_epochs = sl_epochs = B for each B "
        "(the accuracy-against-cost frontiers); default: --ssl-epochs / --sl-epochs (auto: "
        "sized from each cell's data)",
    )
    group.add_argument(
        "--no-warmup", action="store_true", help="skip the untimed warm-up before the runs"
    )
    group.add_argument(
        "--force",
        action="store_true",
        help="run again over an existing DIR/compare.json, replacing its run folders",
    )
    known = {a.dest for a in parser._actions}
    parser.set_defaults(**{k: v for k, v in compare.COMPARE_DEFAULTS.items() if k in known})


def fraction_arg(text: str | float) -> float | tuple[float, int]:
    """FRACTION or FRACTION:N (N >= 1 seeds), as --fractions takes them."""
    fraction, _, seeds = str(text).partition(":")
    try:
        return (float(fraction), int(seeds)) if seeds else float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want FRACTION or FRACTION:N, got {text!r}") from None


def split_fraction_seeds(args: argparse.Namespace) -> None:
    """--fractions' FRACTION:N entries into args.fractions (floats) and args.seed_counts
    (fraction -> N), checked against --seeds."""
    pairs = [item if isinstance(item, tuple) else (item, None) for item in args.fractions]
    args.fractions = [fraction for fraction, _ in pairs]
    given = {fraction: n for fraction, n in pairs if n is not None}
    args.seed_counts = {**getattr(args, "seed_counts", {}), **given}  # idempotent
    for fraction, n in args.seed_counts.items():
        if not 1 <= n <= len(args.seeds):
            raise UsageError(
                f"--fractions {fraction:g}:{n}: N must be 1 to the {len(args.seeds)} --seeds"
            )


def check_compare_args(args: argparse.Namespace) -> Path:
    if env_world() > 1:  # every process would run the whole grid into the same folders
        raise UsageError(
            f"compare runs its cells one after another in one process, not under torchrun "
            f"(WORLD_SIZE={env_world()}): run `mixfast compare` without torchrun (one device, "
            "--device), or train each pipeline on many devices with `torchrun ... mixfast train "
            "--pipeline PIPELINE`"
        )
    split_fraction_seeds(args)
    for fraction in args.fractions:
        if not 0.0 < fraction <= 1.0:
            raise UsageError(f"--fractions values must be in (0, 1], got {fraction}")
    if any(seed < 0 for seed in args.seeds):
        raise UsageError(f"--seeds must be integers >= 0, got {args.seeds}")
    if args.budgets and any(budget < 1 for budget in args.budgets):
        raise UsageError(f"--budgets must be epochs >= 1, got {args.budgets}")
    repeatable = (
        ("--fractions", args.fractions),
        ("--seeds", args.seeds),
        ("--pipelines", args.pipelines),
        ("--regimes", args.regimes),
        ("--budgets", args.budgets or []),
    )
    for flag, values in repeatable:
        if len(set(values)) != len(values):
            raise UsageError(f"{flag} has repeated values: {values}")
    if args.ssl_pool is not None:
        raise UsageError("compare takes --regimes, not --ssl-pool")
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
    held = [d for d in compare.run_dirs(args.out, compare.grid(args)) if holds_run(d)]
    if held and not (args.resume or args.force):
        raise UsageError(
            f"{held[0]} already holds a run ({len(held)} of this comparison's run folders do); "
            "pass --resume to reuse them, --force to replace them, or another --out"
        )
    return report


def compare_config(args: argparse.Namespace) -> compare.CompareConfig:
    return compare.CompareConfig(
        out=args.out,
        fractions=tuple(args.fractions),
        seeds=tuple(args.seeds),
        pipelines=tuple(args.pipelines),
        regimes=tuple(args.regimes),
        budgets=tuple(args.budgets) if args.budgets else None,
        seed_counts=dict(args.seed_counts),
        warmup=not args.no_warmup,
        resume=bool(args.resume),
        force=args.force,
    )


def cmd_compare(args: argparse.Namespace) -> Callable[[], int]:
    """Set up and validate everything (errors exit 2); return the runs to do."""
    report_path = check_compare_args(args)
    cmp = compare_config(args)
    spec = spec_from_args(argparse.Namespace(**{**vars(args), "regime": args.regimes[0]}))
    spec = spec.replace(data={"fraction": args.fractions[0]})  # what data.json describes
    if cmp.resume:
        stale = compare.stale_runs(cmp, spec)
        if stale:
            raise UsageError(
                f"--resume: {len(stale)} run folder(s) of {cmp.out} were made with other "
                f"settings, so their results cannot be reused: {', '.join(stale[:3])}; pass "
                "--force to run them again, or another --out"
            )
    splits = experiment.open_source(spec)
    first = experiment.prepare_data(splits, spec)
    experiment.model_kwargs(spec.model, first)  # checks the patch grid (and warns) first
    compare.check_cells(cmp, spec, splits)
    settings = {
        "protocol": compare.PROTOCOL,  # the pipeline order rotates: wall time may be evidence
        "dataset": spec.data.dataset,
        "regimes": list(cmp.regimes),
        "fractions": list(cmp.fractions),
        "budgets": None if cmp.budgets is None else list(cmp.budgets),
        "seeds": list(cmp.seeds),
        "seed_counts": {str(f): n for f, n in cmp.seed_counts.items()},
        "pipelines": list(cmp.pipelines),
        "config": {
            k: "auto" if k in spec.auto else compare.jsonable(v)
            for k, v in dataclasses.asdict(spec.train).items()
        },
        "data": experiment.data_record(spec, first),
        "device": compare.describe_device(spec.train.device),
        **provenance(),
    }
    print(compare.PROTOCOL, file=sys.stderr)

    def work() -> int:
        runs = compare.run_all(cmp, spec, splits, settings, report_path)
        report.print_table(runs, settings)
        plot_path = report_path.with_suffix(".png")
        report.plot(runs, plot_path, settings)
        curves_path = report_path.with_name("compare-curves.png")
        report.plot_curves(runs, curves_path, settings)
        print(f"\nwrote {report_path}, {plot_path} and {curves_path}")
        return 0

    return work
