"""`mixfast train`: one pipeline on one dataset."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from mixfast import experiment
from mixfast.checkpoint import RunFolder, write_json
from mixfast.cli.args import add_run_arguments, spec_from_args
from mixfast.health import run_health
from mixfast.train import MixTrainer, distributed


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
    """Set up (errors here exit 2, nothing written), then return the work to run (errors
    there exit 1). The command owns the run folder: checked, claimed and released once."""
    if args.out is None:  # a new folder per run
        args.out = f"runs/{args.pipeline.replace('+', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = spec_from_args(args)
    config = spec.train
    folder = RunFolder(config.out, config.resume)
    if folder.resume:
        experiment.check_data_record(spec, folder.path)
    data = experiment.load_data(spec)
    spec, budget = experiment.with_budget(spec, data)
    config = spec.train
    experiment.check_data_fits(spec, data)
    model = experiment.build_model(spec, data)
    config = experiment.with_augment(config, data, spec.data)
    config = experiment.with_weights(config, spec.model)
    trainer = MixTrainer(model, config)
    trainer.prepare(*data.fit_inputs(), folder=folder)  # the checkpoint's own settings checked
    main_rank = distributed.env_rank() == 0
    if main_rank:
        folder.claim()  # marker + lock, before the first file is written
        if not folder.resume:
            record = experiment.data_record(spec, data, model, budget)
            write_json(folder.path / "data.json", record)
        name = spec.data.dataset
        print(f"mixfast train: {config.pipeline} on {name}: {data.summary()}", file=sys.stderr)
        if budget is not None:
            print(f"mixfast train: {budget.describe()}", file=sys.stderr)
        for note in getattr(model, "pretrained_notes", []):
            print(f"mixfast train: weights: {note}", file=sys.stderr)

    def work() -> int:
        with folder:
            result = trainer.run()
        if main_rank:
            print(f"{top1_line(result, [t.name for t in data.tasks])} -> {config.out}")
            print(f"validation curve: {run_health(result.epochs, data.val_size).text}")
        return 0

    return work


__all__ = ["add_parser", "cmd_train"]
