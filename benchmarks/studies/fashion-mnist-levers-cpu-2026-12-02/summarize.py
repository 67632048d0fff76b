"""The lever study's table: each mix arm paired with the base arm's ssl+sl (and with the base
arm's mix) per regime and fraction, on validation top-1; test top-1 beside it, read once per run.

    python benchmarks/studies/fashion-mnist-levers-cpu-2026-12-02/summarize.py \
        runs/levers-2026-12-02 > benchmarks/results/fashion-mnist-levers-cpu-2026-12-02/levers.md
"""

import json
import sys
from pathlib import Path

from mixfast.stats import paired_diff


def load(root: Path, arm: str) -> list[dict]:
    return json.loads((root / arm / "compare.json").read_text())["runs"]


def by_cell(runs: list[dict], pipeline: str) -> dict[tuple, dict[int, dict]]:
    cells: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        if run["pipeline"] == pipeline:
            cells.setdefault((run["regime"], run["fraction"]), {})[run["seed"]] = run
    return cells


def paired(arm: dict[int, dict], base: dict[int, dict], key: str) -> str:
    seeds = sorted(set(arm) & set(base))
    if not seeds:
        return "n/a"
    d = paired_diff([100 * arm[s][key] for s in seeds], [100 * base[s][key] for s in seeds])
    return f"{d.mean:+.2f} [{d.t_low:+.2f}, {d.t_high:+.2f}]"


def main(root: Path) -> None:
    base = load(root, "base")
    ssl_sl, mix_default = by_cell(base, "ssl+sl"), by_cell(base, "mix")
    arms = ["base"] + sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "base")
    print("# MixTraining levers, Fashion-MNIST 2,700-image pool, 6+6 epochs, 5 seeds (CPU)\n")
    print("Δ = mix arm − ssl+sl (base arm), paired by seed, in top-1 points, mean [95 % t CI].")
    print("Δ default = mix arm − the default mix (base arm). Selection reads val; test is shown.\n")
    print(
        "| arm | regime | fraction | n | mix val | Δ val vs ssl+sl | Δ val vs default mix "
        "| mix test | Δ test vs ssl+sl | FLOPs ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    means: dict[str, list[float]] = {}
    for arm_name in arms:
        if not (root / arm_name / "compare.json").exists():
            continue
        mix = by_cell(load(root, arm_name), "mix")
        for cell in sorted(mix):
            runs = mix[cell]
            val = sum(r["val_top1"] for r in runs.values()) / len(runs)
            test = sum(r["top1"] for r in runs.values()) / len(runs)
            base_runs = ssl_sl.get(cell, {})
            flops = [runs[s]["flops"] / base_runs[s]["flops"] for s in runs if s in base_runs]
            ratio = f"{sum(flops) / len(flops):.2f}" if flops else "n/a"
            seeds = sorted(set(runs) & set(base_runs))
            means.setdefault(arm_name, []).extend(
                100 * (runs[s]["val_top1"] - base_runs[s]["val_top1"]) for s in seeds
            )
            print(
                f"| {arm_name} | {cell[0]} | {cell[1]:g} | {len(runs)} | {100 * val:.2f} "
                f"| {paired(runs, base_runs, 'val_top1')} "
                f"| {paired(runs, mix_default.get(cell, {}), 'val_top1')} | {100 * test:.2f} "
                f"| {paired(runs, base_runs, 'top1')} | {ratio} |"
            )
    print("\nMean Δ val vs ssl+sl over every (regime, fraction, seed) pair:\n")
    for arm_name, diffs in means.items():
        print(f"- {arm_name}: {sum(diffs) / len(diffs):+.2f} points over {len(diffs)} pairs")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/levers-2026-12-02"))
