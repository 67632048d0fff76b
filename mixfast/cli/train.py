"""`mixfast train`: one pipeline on one dataset."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mixfast import experiment
from mixfast.checkpoint import check_run_folder, claim_run_folder, write_json
from mixfast.cli.args import add_run_arguments, config_from_args
from mixfast.train import distributed, trainer


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train one pipeline", description="Train one pipeline.")
    add_run_arguments(parser)
    parser.set_defaults(handler=cmd_train)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def top1_line(result, names: list[str] | None = None) -> str:
    tasks = ""
    if names and len(names) > 1:
        tests = result.test_top1_tasks or [None] * len(names)
        tasks = "".join(
            f"\n  {name}: val top-1 {percent(v)}  test top-1 {percent(t)}"
            for name, v, t in zip(names, result.top1_tasks, tests)
        )
    return (
        f"val top-1 {percent(result.top1)}  test top-1 {percent(result.test_top1)}  "
        f"train {result.train_wall_s:.1f}s  eval {result.eval_wall_s:.1f}s  "
        f"{result.flops / 1e12:.3g} TFLOP{tasks}"
    )


def cmd_train(args: argparse.Namespace) -> Callable[[], int]:
    """Set up (errors here exit 2), then return the work to run (errors there exit 1)."""
    if args.out is None:  # a new folder per run
        args.out = f"runs/{args.pipeline.replace('+', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = config_from_args(args)
    check_run_folder(config.out, config.resume)
    if config.resume:
        experiment.check_resume(args, config, config.out)
    data = experiment.load_data(args)
    experiment.check_data_fits(args, config, data, config.mask_ratio)
    model = experiment.build_model(args, data, config.seed)
    config = experiment.with_augment(config, data, args)
    main_rank = distributed.env_rank() == 0
    if main_rank:
        claim_run_folder(config.out)  # marker + lock, before the first file is written
        if not config.resume:
            settings = experiment.data_settings(args, data, args.fraction)
            write_json(Path(config.out) / "data.json", settings)
        print(
            f"mixfast train: {config.pipeline} on {args.dataset}: {data.summary()}", file=sys.stderr
        )

    def work() -> int:
        ssl_data, sl_data, val_data, test_data = data.fit_inputs()
        result = trainer.train(config, model, ssl_data, sl_data, val_data, test_data=test_data)
        if main_rank:
            print(f"{top1_line(result, [t.name for t in data.tasks])} -> {config.out}")
        return 0

    return work
