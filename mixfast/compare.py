"""`mixfast compare`: SL-only vs SSL+SL vs MixTraining on the same data, fractions and seeds.

Writes DIR/<pipeline>-f<fraction>-s<seed>/ per run (the trainer's files), DIR/compare.json
(`runs`: pipeline, fraction, seed, top1, wall_s, ...) after every run, and DIR/compare.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixfast import experiment
from mixfast.checkpoint import write_json
from mixfast.schedule import PIPELINES
from mixfast.train import train

PROTOCOL = (
    "Evaluation protocol: top-1 of the fine-tuned classifier after the last epoch on the "
    "held-out test split, identical for every pipeline; the pipelines of one seed share the "
    "labeled subset and the initial weights, and get the same SSL and SL epoch budgets "
    "(with --ssl-pool all a mix epoch is one pass over the larger SSL pool with the labeled set "
    "cycled, so mix makes more SL sample-passes: each run's sample_passes says how many)."
)
# The README's main command: all three pipelines at two label fractions of a 10000-image
# Fashion-MNIST subset, sized to end within 10 minutes on 2 CPU cores. Short runs on small
# batches need larger base lrs than MAE's (they scale with batch / 256): 8e-3 x 32 / 256 = 1e-3.
COMPARE_DEFAULTS: dict[str, Any] = {
    "out": "runs/compare",
    "train_limit": 10000,
    "test_limit": 2000,
    "ssl_epochs": 8,
    "sl_epochs": 8,
    "mix_ratio": 0.5,
    "batch_size": 32,
    "blr": 8e-3,
    "ssl_blr": 8e-3,
    "depth": 3,
    "embed_dim": 64,
    "num_heads": 2,
    "decoder_dim": 64,
    "decoder_depth": 1,
}


def run_name(pipeline: str, fraction: float, seed: int) -> str:
    return f"{pipeline}-f{fraction:g}-s{seed}"


def run_dirs(out: str, fractions, seeds, pipelines) -> list[Path]:
    grid = [(f, s, p) for f in fractions for s in seeds for p in pipelines]
    return [Path(out) / run_name(p, f, s) for f, s, p in grid]


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "last.pt").exists() or (run_dir / "result.json").exists()


def run_all(
    args: argparse.Namespace, base: Any, splits: Any, settings: dict, report_path: Path
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    total = len(args.fractions) * len(args.seeds) * len(args.pipelines)
    for fraction in args.fractions:
        for seed in args.seeds:
            seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
            data = experiment.prepare_data(splits, seed_args, fraction=fraction)
            for pipeline in args.pipelines:
                run_dir = Path(args.out) / run_name(pipeline, fraction, seed)
                label = f"[{len(runs) + 1}/{total}] {pipeline} fraction={fraction:g} seed={seed}"
                result = _finished(run_dir) if args.resume else None
                if result is None:
                    print(f"{label}: {data.summary()}", file=sys.stderr)
                    if args.force and holds_run(run_dir):
                        shutil.rmtree(run_dir)  # --force: this run starts over
                    config = dataclasses.replace(
                        base,
                        pipeline=pipeline,
                        seed=seed,
                        out=str(run_dir),
                        resume=bool(args.resume and (run_dir / "last.pt").exists()),
                    )
                    config = experiment.with_augment(config, data, seed_args)
                    model = experiment.build_model(seed_args, data, seed)
                    result = train(config, model, data.ssl_data, data.sl_data, data.val_data)
                    result = result.to_dict()
                    write_json(
                        run_dir / "data.json", experiment.data_settings(args, data, fraction)
                    )
                else:
                    print(f"{label}: reusing {run_dir / 'result.json'}", file=sys.stderr)
                runs.append(run_record(pipeline, fraction, seed, result, run_dir))
                write_json(report_path, {"protocol": PROTOCOL, **settings, "runs": runs})
    summary = summarize(runs)
    write_json(report_path, {"protocol": PROTOCOL, **settings, "runs": runs, "summary": summary})
    return runs


def _finished(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_record(
    pipeline: str, fraction: float, seed: int, result: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "fraction": fraction,
        "seed": seed,
        "top1": float(result["top1"]),
        "wall_s": float(result["wall_s"]),
        "run_dir": str(run_dir),
        "result": {k: jsonable(v) for k, v in result.items()},
    }


def jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


# --------------------------------------------------------------------------------------------
# Summary, table, plot


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction: mean/std top-1 and wall per pipeline, mix vs ssl+sl speedup and gain."""
    rows = []
    for fraction in sorted({r["fraction"] for r in runs}):
        row: dict[str, Any] = {"fraction": fraction}
        for pipeline in PIPELINES:
            chosen = [r for r in runs if r["fraction"] == fraction and r["pipeline"] == pipeline]
            if not chosen:
                continue
            top1, top1_std = _mean_std([r["top1"] for r in chosen])
            wall, _ = _mean_std([r["wall_s"] for r in chosen])
            row[pipeline] = {"top1": top1, "top1_std": top1_std, "wall_s": wall, "n": len(chosen)}
        if "mix" in row and "ssl+sl" in row:
            row["speedup"] = row["ssl+sl"]["wall_s"] / max(row["mix"]["wall_s"], 1e-9)
            row["top1_gain"] = row["mix"]["top1"] - row["ssl+sl"]["top1"]
        rows.append(row)
    return rows


def format_table(runs: Sequence[dict[str, Any]]) -> str:
    present = [p for p in PIPELINES if any(r["pipeline"] == p for r in runs)]
    header = ["fraction"] + [f"{p} top-1 %" for p in present] + [f"{p} wall s" for p in present]
    header += ["mix speedup", "mix gain (pts)"]
    lines = []
    for row in summarize(runs):
        cells = [f"{row['fraction']:g}"]
        for p in present:
            stat = row.get(p)
            if stat is None:
                cells.append("-")
            elif stat["n"] > 1:
                cells.append(f"{100 * stat['top1']:.2f} ± {100 * stat['top1_std']:.2f}")
            else:
                cells.append(f"{100 * stat['top1']:.2f}")
        cells += [f"{row[p]['wall_s']:.1f}" if p in row else "-" for p in present]
        cells.append(f"{row['speedup']:.2f}x" if "speedup" in row else "-")
        cells.append(f"{100 * row['top1_gain']:+.2f}" if "top1_gain" in row else "-")
        lines.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    out = ["  ".join(c.rjust(w) for c, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def print_table(runs: Sequence[dict[str, Any]], settings: dict[str, Any]) -> None:
    seeds = len(settings["seeds"])
    print(f"\n{settings['dataset']} on {settings['device']}, {seeds} seed(s) per cell")
    print(PROTOCOL)
    print(format_table(runs))
    print(
        "top-1: mean ± std over seeds; wall: mean seconds per run (training + evaluation); "
        "speedup: ssl+sl wall / mix wall; gain: mix top-1 - ssl+sl top-1 in points"
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, top1) points no other point beats on both: less time and higher accuracy."""
    front: list[tuple[float, float]] = []
    for wall, top1 in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or top1 > front[-1][1]:
            front.append((wall, top1))
    return front


def plot(runs: Sequence[dict[str, Any]], path: Path, settings: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted({r["fraction"] for r in runs})
    cols = min(len(fractions), 3)
    rows = math.ceil(len(fractions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.8 * rows), squeeze=False)
    colors = {"sl": "tab:gray", "ssl+sl": "tab:blue", "mix": "tab:red"}
    for ax, fraction in zip(axes.flat, fractions):
        chosen = [r for r in runs if r["fraction"] == fraction]
        for pipeline in PIPELINES:
            mine = [r for r in chosen if r["pipeline"] == pipeline]
            if mine:
                ax.scatter(
                    [r["wall_s"] for r in mine],
                    [100 * r["top1"] for r in mine],
                    color=colors[pipeline],
                    label=pipeline,
                    zorder=3,
                )
        front = pareto_front([(r["wall_s"], r["top1"]) for r in chosen])
        front.append((max(r["wall_s"] for r in chosen), front[-1][1]))  # run the step to the end
        ax.step(
            [w for w, _ in front],
            [100 * t for _, t in front],
            where="post",
            color="black",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
        )
        ax.set_title(f"labeled fraction {fraction:g}")
        ax.set_xlabel("wall time per run (s)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(fractions) :]:
        ax.axis("off")
    fig.suptitle(f"{settings['dataset']} on {settings['device']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe_device(device: Any) -> str:
    import os

    import torch

    name = str(device or "auto")
    if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available():
            index = torch.device(name).index if name.startswith("cuda") else None
            return torch.cuda.get_device_name(index or 0)
    return f"cpu ({os.cpu_count()} cores)"
