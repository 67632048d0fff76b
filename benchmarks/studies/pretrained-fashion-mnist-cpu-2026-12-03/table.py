"""The tables of the pretrained-weights study from its compare.json files, in markdown.

    python table.py [RESULTS_DIR]   (default: benchmarks/results/<this folder's name>/)

RESULTS_DIR holds one folder per arm (scratch, weights, weights-mixup, weights-ema<D>), each
with its compare.json. Tables:
1. from the weights against from scratch, per pipeline and fraction: test top-1 (mean ± 95 % t
   half-width over seeds), and weights - scratch paired by seed on validation and on test, each
   with its 95 % t interval and the verdict of mixfast.stats (cost: fine-tuning FLOPs, the
   pre-training not counted);
2. each compare's own table (mix - ssl+sl), as `mixfast compare` prints it;
3. the fine-tune recipe from the weights, SL pipeline: each arm - the plain SL runs of "weights",
   paired by seed, on validation (where a choice is read) and on test; an EMA arm's raw weights
   beside it (they train exactly as the plain runs, so their difference is 0 when the run is
   deterministic).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mixfast.report import format_table
from mixfast.schedule import PIPELINES
from mixfast.stats import paired_diff, t_quantile_975, verdict

Run = dict[str, Any]


def load(folder: Path) -> dict[str, dict[str, Any]]:
    """arm name -> its compare.json, for every arm folder of `folder`."""
    reports = {}
    for path in sorted(folder.glob("*/compare.json")):
        reports[path.parent.name] = json.loads(path.read_text())
    return reports


def by_cell(report: dict[str, Any]) -> dict[tuple[str, float], dict[int, Run]]:
    """(pipeline, fraction) -> seed -> run."""
    cells: dict[tuple[str, float], dict[int, Run]] = {}
    for run in report["runs"]:
        cells.setdefault((run["pipeline"], run["fraction"]), {})[run["seed"]] = run
    return cells


def mean_text(values: list[float]) -> str:
    """Mean ± 95 % t half-width, in percent."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{100 * mean:.2f}"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    half = t_quantile_975(len(values) - 1) * sd / len(values) ** 0.5
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def diff_text(treatment: list[float], baseline: list[float]) -> tuple[str, Any]:
    """The paired difference in points as text, "+d.dd [lo, hi]", and the PairedDiff."""
    diff = paired_diff([100 * v for v in treatment], [100 * v for v in baseline])
    if diff.n < 2:
        return f"{diff.mean:+.2f} (1 seed)", diff
    return f"{diff.mean:+.2f} [{diff.t_low:+.2f}, {diff.t_high:+.2f}]", diff


def paired(treat: dict[int, Run], base: dict[int, Run]) -> list[int]:
    return sorted(set(treat) & set(base))


def weights_vs_scratch(reports: dict[str, dict[str, Any]]) -> list[str]:
    weights, scratch = by_cell(reports["weights"]), by_cell(reports["scratch"])
    lines = [
        "| pipeline | fraction | seeds | scratch test % | weights test % | Δ val (95% t) "
        "| verdict (val) | Δ test (95% t) | verdict (test) | FLOPs ratio |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for fraction in sorted({f for _, f in weights}):
        for pipeline in PIPELINES:
            treat, base = weights.get((pipeline, fraction)), scratch.get((pipeline, fraction))
            if not treat or not base:
                continue
            seeds = paired(treat, base)
            t_runs, b_runs = [treat[s] for s in seeds], [base[s] for s in seeds]
            val, vdiff = diff_text([r["val_top1"] for r in t_runs], [r["val_top1"] for r in b_runs])
            test, diff = diff_text([r["top1"] for r in t_runs], [r["top1"] for r in b_runs])
            ratio = sum(r["flops"] for r in t_runs) / sum(r["flops"] for r in b_runs)
            word, vword = verdict(diff, ratio, "FLOPs").word, verdict(vdiff, ratio, "FLOPs").word
            lines.append(
                f"| {pipeline} | {fraction:g} | {len(seeds)} "
                f"| {mean_text([r['top1'] for r in b_runs])} "
                f"| {mean_text([r['top1'] for r in t_runs])} | {val} | {vword} | {test} | {word} "
                f"| {ratio:.3f} |"
            )
    return lines


def recipe(reports: dict[str, dict[str, Any]]) -> list[str]:
    plain = by_cell(reports["weights"])
    lines = [
        "| arm | fraction | seeds | plain val % | arm val % | Δ val (95% t) | verdict (val) "
        "| plain test % | arm test % | Δ test (95% t) | raw - plain test |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for arm in sorted(a for a in reports if a.startswith("weights-")):
        cells = by_cell(reports[arm])
        for fraction in sorted({f for p, f in cells if p == "sl"}):
            treat, base = cells[("sl", fraction)], plain.get(("sl", fraction), {})
            seeds = paired(treat, base)
            if not seeds:
                continue
            t_runs, b_runs = [treat[s] for s in seeds], [base[s] for s in seeds]
            val, vdiff = diff_text([r["val_top1"] for r in t_runs], [r["val_top1"] for r in b_runs])
            test, _ = diff_text([r["top1"] for r in t_runs], [r["top1"] for r in b_runs])
            raws = [r["result"].get("test_top1_raw") for r in t_runs]
            raw = "-"
            if all(isinstance(v, float) for v in raws):
                raw, _ = diff_text(raws, [r["top1"] for r in b_runs])
            word = verdict(vdiff, 1.0, "FLOPs").word.replace("win", "better")
            lines.append(
                f"| {arm} | {fraction:g} | {len(seeds)} "
                f"| {mean_text([r['val_top1'] for r in b_runs])} "
                f"| {mean_text([r['val_top1'] for r in t_runs])} | {val} | {word} "
                f"| {mean_text([r['top1'] for r in b_runs])} "
                f"| {mean_text([r['top1'] for r in t_runs])} | {test} | {raw} |"
            )
    return lines


def main() -> int:
    default = Path(__file__).resolve().parents[2] / "results" / Path(__file__).resolve().parent.name
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    reports = load(folder)
    out: list[str] = []
    if "weights" in reports and "scratch" in reports:
        out += ["## From the weights against from scratch (classes 5-9)", ""]
        out += weights_vs_scratch(reports)
        out += [""]
    for arm in ("scratch", "weights"):
        if arm in reports:
            report = reports[arm]
            out += [f"## compare's table: {arm}", "", "```"]
            out += [format_table(report["runs"], report), "```", ""]
    if "weights" in reports and any(a.startswith("weights-") for a in reports):
        out += ["## The fine-tune recipe from the weights (SL pipeline)", ""]
        out += recipe(reports)
        out += [""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
