"""`mixfast compare`: SL vs SSL+SL vs MixTraining on the same data, regimes, label fractions,
epoch budgets and seeds; the statistics and the plot are in mixfast/report.py.

Writes DIR/<run name>/ per run (the trainer's files), DIR/compare.json (`runs` after every run,
`summary` at the end) and DIR/compare.png.
"""

from __future__ import annotations

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
from mixfast.health import run_health
from mixfast.train import train
from mixfast.train.settings import RunSpec

PROTOCOL = (
    "Protocol: every pipeline of a seed shares the labeled subset, the initial weights and the "
    "epoch budget, and makes the same sample passes per objective (a mix epoch is one pass over "
    "the labeled images; the SSL passes it does not make go to the SSL phase). Every choice is "
    "read on the validation split carved from the training images; test top-1 is read once, at "
    "the end of each run. The pipeline order rotates per seed after an untimed warm-up; cost is "
    "training time (evaluation apart) and model FLOPs (forward + backward, load-independent)."
)
# compare's defaults: the three pipelines at two label fractions of a 33,000-image Fashion-MNIST
# subset (3,300 of it validation), three seeds (the fewest that carry a verdict), the budget
# sized from each cell's data (mixfast/budget.py: 3 SSL + 6 SL epochs at batch 128 at 100 %
# labels). The recipe (model, lrs, no augmentation:
# benchmarks/results/fashion-mnist-recipe-cpu-2026-12-01/; subset, batch 128 and epochs:
# benchmarks/results/fashion-mnist-demo-batch128-cpu-2026-12-02/) was chosen on validation.
# `make demo` runs 5 % labels with the three seeds and 100 % with seed 0 only
# (--fractions 0.05 1.0:1) to fit its time.
COMPARE_DEFAULTS: dict[str, Any] = {
    "out": "runs/compare",
    "train_limit": 33000,
    "seeds": [0, 1, 2],
    "mix_ratio": 0.5,
    "blr": 1e-2,
    "ssl_blr": 1e-2,
    "depth": 3,
    "embed_dim": 64,
    "num_heads": 2,
    "decoder_dim": 64,
    "decoder_depth": 1,
}


@dataclass(frozen=True)
class CompareConfig:
    """The grid of a comparison: every regime x fraction x budget x seed x pipeline."""

    out: str = COMPARE_DEFAULTS["out"]
    fractions: tuple[float, ...] = (0.1, 1.0)
    seeds: tuple[int, ...] = tuple(COMPARE_DEFAULTS["seeds"])
    pipelines: tuple[str, ...] = ("sl", "ssl+sl", "mix")
    regimes: tuple[str, ...] = ("data-limited",)
    budgets: tuple[int, ...] | None = None  # epochs of each objective; None: the config's
    seed_counts: dict[float, int] = dataclasses.field(default_factory=dict)  # fraction -> N
    warmup: bool = True  # one untimed step of every pipeline and phase first
    resume: bool = False  # reuse finished runs, continue stopped ones
    force: bool = False  # run again, replacing the run folders


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


def grid(cmp: CompareConfig) -> list[Cell]:
    """Every run, in the order they are made: the pipeline order rotates with the seed, so no
    pipeline always runs first (after the warm-up) or last. A fraction in seed_counts runs the
    first N seeds only. Semi-supervised at fraction 1 is
    the data-limited run again (every image is labeled), so it is left out when both run."""
    cells = []
    pipelines = list(cmp.pipelines)
    for regime in cmp.regimes:
        for fraction in cmp.fractions:
            if regime == "semi-supervised" and fraction == 1.0 and len(cmp.regimes) > 1:
                continue
            count = (getattr(cmp, "seed_counts", None) or {}).get(fraction, len(cmp.seeds))
            for budget in cmp.budgets or [None]:
                for k, seed in enumerate(cmp.seeds[:count]):
                    turn = k % len(pipelines)
                    order = pipelines[turn:] + pipelines[:turn]
                    cells += [Cell(p, regime, fraction, budget, seed) for p in order]
    return cells


def run_dirs(out: str, cells: list[Cell]) -> list[Path]:
    return [Path(out) / cell.name for cell in cells]


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "last.pt").exists() or (run_dir / "result.json").exists()


def cell_spec(spec: RunSpec, cell: Cell, run_dir: Path, resume: bool) -> RunSpec:
    """The settings of one run of the grid."""
    epochs = {} if cell.budget is None else {"ssl_epochs": cell.budget, "sl_epochs": cell.budget}
    train = dict(
        pipeline=cell.pipeline,
        seed=cell.seed,
        out=str(run_dir),
        resume=bool(resume and (run_dir / "last.pt").exists()),
        **epochs,
    )
    return spec.replace(data={"fraction": cell.fraction, "regime": cell.regime}, train=train)


def warm_up(cmp: CompareConfig, spec: RunSpec, splits: Any) -> None:
    """One untimed step of every pipeline and phase on a few images: kernels, allocator and
    (on CUDA) compilation are warm before the first timed run."""
    spec = spec.replace(data={"fraction": 1.0})
    data = experiment.prepare_data(splits, spec)
    spec, _ = experiment.with_budget(spec, data)
    few = 2 * spec.train.batch_size
    heads = [task.sl_data for task in data.tasks]
    tiny = [dataset_of(s.images[:few], s.labels[:few], s.mean, s.std) for s in heads]
    ssl_epochs = 1 if spec.train.ssl_share == 1.0 else 2  # an SSL epoch for the passes mix leaves
    for pipeline in cmp.pipelines:
        config = dataclasses.replace(
            spec.train, pipeline=pipeline, ssl_epochs=ssl_epochs, sl_epochs=1, mix_ratio=1.0
        )
        config = dataclasses.replace(config, out=None, progress=False, resume=False)
        config = experiment.with_weights(config, spec.model)
        model = experiment.build_model(spec, data)
        train(config, model, None, tiny, None)


def check_cells(cmp: CompareConfig, spec: RunSpec, splits: Any) -> None:
    """Before any work: every run of the grid has a batch of data and a plan that can be made
    (each regime and fraction's data, with the first seed: sizes do not depend on it)."""
    distinct: dict[tuple, Cell] = {}
    for c in grid(cmp):
        distinct.setdefault((c.regime, c.fraction, c.budget, c.pipeline), c)  # the first seed
    datas: dict[tuple, Any] = {}
    for cell in distinct.values():
        run = cell_spec(spec, cell, Path(cmp.out) / cell.name, resume=False)
        key = (cell.regime, cell.fraction)
        if key not in datas:
            datas[key] = experiment.prepare_data(splits, run)
        run, _ = experiment.with_budget(run, datas[key])
        try:
            experiment.check_data_fits(run, datas[key])
        except SettingError as exc:
            where = f"{cell.pipeline}, {cell.regime}, fraction {cell.fraction}"
            budget = "" if cell.budget is None else f", budget {cell.budget}"
            raise SettingError(f"{exc.template} ({where}{budget})") from exc


def run_all(
    cmp: CompareConfig, spec: RunSpec, splits: Any, settings: dict, report_path: Path
) -> list[dict[str, Any]]:
    cells = grid(cmp)
    if cmp.warmup:
        print("warm-up (untimed)", file=sys.stderr)
        warm_up(cmp, spec, splits)
    runs: list[dict[str, Any]] = []
    data_cache: dict[tuple, Any] = {}
    for index, cell in enumerate(cells):
        run_dir = Path(cmp.out) / cell.name
        run = cell_spec(spec, cell, run_dir, cmp.resume)
        key = (cell.regime, cell.fraction, cell.seed)
        if key not in data_cache:
            data_cache = {key: experiment.prepare_data(splits, run)}
        data = data_cache[key]
        run, budget = experiment.with_budget(run, data)
        label = f"[{index + 1}/{len(cells)}] {cell.name}"
        result = read_json(run_dir / "result.json") if cmp.resume else None
        if result is None:
            print(f"{label}: {data.summary()}", file=sys.stderr)
            if budget is not None:
                print(f"{label}: {budget.describe()}", file=sys.stderr)
            if cmp.force and holds_run(run_dir):
                shutil.rmtree(run_dir)  # --force: this run starts over
            result, model = _train_cell(run, data)
            record = experiment.data_record(run, data, model, budget)
            write_json(run_dir / "data.json", record)
        else:
            print(f"{label}: reusing {run_dir / 'result.json'}", file=sys.stderr)
        runs.append(run_record(cell, result, run_dir, data.val_size))
        write_json(report_path, {"protocol": PROTOCOL, **settings, "runs": runs})
    from mixfast.report import summarize

    summary = summarize(runs, {"protocol": PROTOCOL, **settings})
    write_json(report_path, {"protocol": PROTOCOL, **settings, "runs": runs, "summary": summary})
    return runs


def stale_runs(cmp: CompareConfig, spec: RunSpec) -> list[str]:
    """Run folders of the grid made with other settings than this comparison's: "name
    (what differs)". A --resume may reuse a run only when nothing differs."""
    stale = []
    for cell in grid(cmp):
        run_dir = Path(cmp.out) / cell.name
        saved = read_json(run_dir / "config.json")
        if saved is None:
            continue
        run = cell_spec(spec, cell, run_dir, resume=True)
        run = dataclasses.replace(run, train=experiment.with_weights(run.train, run.model))
        diffs = experiment.setting_differences(run, saved, read_json(run_dir / "data.json"))
        if diffs:
            listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in diffs)
            stale.append(f"{cell.name} ({listed})")
    return stale


def _train_cell(run: RunSpec, data) -> tuple[dict, Any]:
    """(the result, the model) of one run of the grid."""
    config = experiment.with_augment(run.train, data, run.data)
    config = experiment.with_weights(config, run.model)
    model = experiment.build_model(run, data)
    ssl_data, sl_data, val_data, test_data = data.fit_inputs()
    result = train(config, model, ssl_data, sl_data, val_data, test_data=test_data)
    return result.to_dict(), model


def run_record(
    cell: Cell, result: dict[str, Any], run_dir: Path, val_size: int = 0
) -> dict[str, Any]:
    """One row of compare.json: top1 is the test top-1 (read once), val_top1 validation; with
    several tasks both are the average over tasks (the paper's metric), per task beside them;
    health, how the validation curve of `val_size` images ended (mixfast/health.py)."""
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
        "epochs": {"ssl": resolved_epochs(result, "ssl"), "sl": resolved_epochs(result, "sl")},
        "batch_size": result["resolved"].get("effective_batch"),
        "health": run_health(result["epochs"], val_size).to_dict(),
        "run_dir": str(run_dir),
        "result": {k: jsonable(v) for k, v in result.items()},
    }


def resolved_epochs(result: dict[str, Any], objective: str) -> int:
    """The epochs a run's schedule gave `objective` ("ssl" or "sl": its phase or the mix)."""
    return int(result["resolved"]["schedule"][f"{objective}_epochs"])


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
