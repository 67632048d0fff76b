"""`mixfast compare`: SL vs SSL+SL vs MixTraining on the same data, regimes, label fractions,
epoch budgets and seeds; the statistics and the plot are in mixfast/report.py.

Writes DIR/<run name>/ per run (the trainer's files), DIR/compare.json (`runs` after every run,
`summary` at the end) and DIR/compare.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixfast import experiment
from mixfast.checkpoint import read_json, write_json
from mixfast.checks import SettingError
from mixfast.data import dataset_of
from mixfast.train import train

PROTOCOL = (
    "Protocol: every pipeline of a seed shares the labeled subset, the initial weights and the "
    "epoch budget, and makes the same sample passes per objective (a mix epoch is one pass over "
    "the labeled images; the SSL passes it does not make go to the SSL phase). Every choice is "
    "read on the validation split carved from the training images; test top-1 is read once, at "
    "the end of each run. The pipeline order rotates per seed after an untimed warm-up; cost is "
    "training time (evaluation apart) and model FLOPs (forward + backward, load-independent)."
)
# `make demo`: the three pipelines at two label fractions of a 33,000-image Fashion-MNIST
# subset (3,300 of it validation), two seeds, sized for about 8 minutes on 2 CPU cores. The
# recipe (model, lrs, no augmentation: benchmarks/results/fashion-mnist-recipe-cpu-2026-12-01/;
# subset, batch 128 and epochs: benchmarks/results/fashion-mnist-demo-batch128-cpu-2026-12-02/)
# was chosen on validation.
COMPARE_DEFAULTS: dict[str, Any] = {
    "out": "runs/compare",
    "train_limit": 33000,
    "seeds": [0, 1],
    "ssl_epochs": 3,
    "sl_epochs": 6,
    "mix_ratio": 0.5,
    "batch_size": 128,
    "blr": 1e-2,
    "ssl_blr": 1e-2,
    "depth": 3,
    "embed_dim": 64,
    "num_heads": 2,
    "decoder_dim": 64,
    "decoder_depth": 1,
}


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    pipeline: str
    regime: str
    fraction: float
    budget: int | None  # epochs of each objective (ssl_epochs = sl_epochs), None: the config's
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.pipeline, self.fraction, self.seed, self.regime, self.budget)


def run_name(
    pipeline: str,
    fraction: float,
    seed: int,
    regime: str = "data-limited",
    budget: int | None = None,
) -> str:
    """pipeline-f<fraction>-s<seed>, with -semi and -e<budget> when they are set."""
    name = f"{pipeline}-f{fraction!r}-s{seed}"
    if regime != "data-limited":
        name += "-semi"
    return name if budget is None else f"{name}-e{budget}"


def grid(args: argparse.Namespace) -> list[Cell]:
    """Every run, in the order they are made: the pipeline order rotates with the seed, so no
    pipeline always runs first (after the warm-up) or last. Semi-supervised at fraction 1 is
    the data-limited run again (every image is labeled), so it is left out when both run."""
    cells = []
    budgets = args.budgets or [None]
    for regime in args.regimes:
        for fraction in args.fractions:
            if regime == "semi-supervised" and fraction == 1.0 and len(args.regimes) > 1:
                continue
            for budget in budgets:
                for k, seed in enumerate(args.seeds):
                    turn = k % len(args.pipelines)
                    order = args.pipelines[turn:] + args.pipelines[:turn]
                    cells += [Cell(p, regime, fraction, budget, seed) for p in order]
    return cells


def run_dirs(out: str, cells: list[Cell]) -> list[Path]:
    return [Path(out) / cell.name for cell in cells]


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "last.pt").exists() or (run_dir / "result.json").exists()


def warm_up(args: argparse.Namespace, base: Any, splits: Any) -> None:
    """One untimed step of every pipeline and phase on a few images: kernels, allocator and
    (on CUDA) compilation are warm before the first timed run."""
    settings = argparse.Namespace(**{**vars(args), "fraction": 1.0})
    data = experiment.prepare_data(splits, settings)
    few = 2 * base.batch_size
    heads = [task.sl_data for task in data.tasks]
    tiny = [dataset_of(s.images[:few], s.labels[:few], s.mean, s.std) for s in heads]
    ssl_epochs = 1 if base.ssl_share == 1.0 else 2  # an SSL epoch for the passes mix leaves
    for pipeline in args.pipelines:
        config = dataclasses.replace(
            base, pipeline=pipeline, ssl_epochs=ssl_epochs, sl_epochs=1, mix_ratio=1.0, out=None
        )
        config = dataclasses.replace(config, progress=False, resume=False)
        model = experiment.build_model(settings, data, base.seed)
        train(config, model, None, tiny, None)


def check_cells(args: argparse.Namespace, base: Any, splits: Any) -> None:
    """Before any work: every run of the grid has a batch of data and a plan that can be made
    (each regime and fraction's data, with the first seed: sizes do not depend on it)."""
    distinct: dict[tuple, Cell] = {}
    for c in grid(args):
        distinct.setdefault((c.regime, c.fraction, c.budget, c.pipeline), c)  # the first seed
    datas: dict[tuple, Any] = {}
    for cell in distinct.values():
        cell_args = cell_settings(args, cell)
        key = (cell.regime, cell.fraction)
        if key not in datas:
            datas[key] = experiment.prepare_data(splits, cell_args, fraction=cell.fraction)
        data = datas[key]
        config = cell_config(cell, base, Path(args.out) / cell.name, resume=False)
        try:
            experiment.check_data_fits(cell_args, config, data, config.mask_ratio)
            experiment.with_augment(config, data, cell_args)
        except SettingError as exc:
            where = f"{cell.pipeline}, {cell.regime}, fraction {cell.fraction}"
            budget = "" if cell.budget is None else f", budget {cell.budget}"
            raise SettingError(f"{exc.template} ({where}{budget})") from exc


def run_all(
    args: argparse.Namespace, base: Any, splits: Any, settings: dict, report_path: Path
) -> list[dict[str, Any]]:
    cells = grid(args)
    if not args.no_warmup:
        print("warm-up (untimed)", file=sys.stderr)
        warm_up(args, base, splits)
    runs: list[dict[str, Any]] = []
    data_cache: dict[tuple, Any] = {}
    for index, cell in enumerate(cells):
        cell_args = cell_settings(args, cell)
        key = (cell.regime, cell.fraction, cell.seed)
        if key not in data_cache:
            data_cache = {key: experiment.prepare_data(splits, cell_args, fraction=cell.fraction)}
        data = data_cache[key]
        run_dir = Path(args.out) / cell.name
        label = f"[{index + 1}/{len(cells)}] {cell.name}"
        result = read_json(run_dir / "result.json") if args.resume else None
        if result is None:
            print(f"{label}: {data.summary()}", file=sys.stderr)
            if args.force and holds_run(run_dir):
                shutil.rmtree(run_dir)  # --force: this run starts over
            result = _train_cell(cell, base, data, cell_args, run_dir, args.resume)
            write_json(
                run_dir / "data.json", experiment.data_settings(cell_args, data, cell.fraction)
            )
        else:
            print(f"{label}: reusing {run_dir / 'result.json'}", file=sys.stderr)
        runs.append(run_record(cell, result, run_dir))
        write_json(report_path, {"protocol": PROTOCOL, **settings, "runs": runs})
    from mixfast.report import summarize

    write_json(
        report_path, {"protocol": PROTOCOL, **settings, "runs": runs, "summary": summarize(runs)}
    )
    return runs


def cell_config(cell: Cell, base, run_dir: Path, resume: bool):
    """The TrainConfig of one run of the grid."""
    epochs = {} if cell.budget is None else {"ssl_epochs": cell.budget, "sl_epochs": cell.budget}
    return dataclasses.replace(
        base,
        pipeline=cell.pipeline,
        seed=cell.seed,
        out=str(run_dir),
        resume=bool(resume and (run_dir / "last.pt").exists()),
        **epochs,
    )


def cell_settings(args: argparse.Namespace, cell: Cell) -> argparse.Namespace:
    """The comparison's settings as one run of the grid sees them."""
    settings = argparse.Namespace(**{**vars(args), "seed": cell.seed, "regime": cell.regime})
    settings.fraction, settings.ssl_pool = cell.fraction, None
    return settings


def stale_runs(args: argparse.Namespace, base) -> list[str]:
    """Run folders of the grid made with other settings than this comparison's: "name
    (what differs)". A --resume may reuse a run only when nothing differs."""
    stale = []
    for cell in grid(args):
        run_dir = Path(args.out) / cell.name
        saved = read_json(run_dir / "config.json")
        if saved is None:
            continue
        config = cell_config(cell, base, run_dir, resume=True)
        diffs = experiment.setting_differences(
            cell_settings(args, cell), config, saved, read_json(run_dir / "data.json")
        )
        if diffs:
            listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in diffs)
            stale.append(f"{cell.name} ({listed})")
    return stale


def _train_cell(cell: Cell, base, data, cell_args, run_dir: Path, resume: bool) -> dict:
    config = cell_config(cell, base, run_dir, resume)
    config = experiment.with_augment(config, data, cell_args)
    model = experiment.build_model(cell_args, data, cell.seed)
    ssl_data, sl_data, val_data, test_data = data.fit_inputs()
    result = train(config, model, ssl_data, sl_data, val_data, test_data=test_data)
    return result.to_dict()


def run_record(cell: Cell, result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One row of compare.json: top1 is the test top-1 (read once), val_top1 validation; with
    several tasks both are the average over tasks (the paper's metric), per task beside them."""
    tests = [float(t) for t in result["test_top1_tasks"]]
    vals = [float(v) for v in result["top1_tasks"]]
    return {
        "pipeline": cell.pipeline,
        "regime": cell.regime,
        "fraction": cell.fraction,
        "budget": cell.budget,
        "seed": cell.seed,
        "top1": sum(tests) / len(tests),
        "val_top1": sum(vals) / len(vals),
        "top1_tasks": tests,
        "val_top1_tasks": vals,
        "wall_s": float(result["train_wall_s"]),
        "eval_s": float(result["eval_wall_s"]),
        "flops": int(result["flops"]),
        "passes": dict(result["sample_passes"]),
        "run_dir": str(run_dir),
        "result": {k: jsonable(v) for k, v in result.items()},
    }


def jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def describe_device(device: Any) -> str:
    import os

    import torch

    name = str(device or "auto")
    if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available():
            index = torch.device(name).index if name.startswith("cuda") else None
            return torch.cuda.get_device_name(index or 0)
    return f"cpu ({os.cpu_count()} cores)"
