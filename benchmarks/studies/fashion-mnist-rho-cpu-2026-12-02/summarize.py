"""The rho study's table: each arm's mix runs paired by seed with the protocol's ssl+sl runs
and with its default mix (rho 0.5) runs, per regime and fraction; validation top-1 (where
choices are read) and test top-1 (read once per run) beside it.

    python benchmarks/studies/fashion-mnist-rho-cpu-2026-12-02/summarize.py \
        benchmarks/results/fashion-mnist-rho-cpu-2026-12-02 > rho.md
    python summarize.py FOLDER "TITLE" > OUT.md    # another study's arms (same protocol)

FOLDER defaults to this study's results (benchmarks/results/fashion-mnist-rho-cpu-2026-12-02);
the protocol's runs are read from benchmarks/results/fashion-mnist-protocol-cpu-2026-12-01.
A folder control-sslsl-<arm> beside the arms (ssl+sl run with the arm's change) adds a table:
that ssl+sl against the protocol's, and the arm's mix against it.
"""

import json
import sys
from pathlib import Path

from mixfast.stats import paired_diff, verdict

HERE = Path(__file__).resolve().parent
RESULTS_ROOT = HERE.parents[1] / "results"  # benchmarks/results
PROTOCOL = RESULTS_ROOT / "fashion-mnist-protocol-cpu-2026-12-01" / "compare.json"


def by_cell(path: Path, pipeline: str) -> dict[tuple, dict[int, dict]]:
    cells: dict[tuple, dict[int, dict]] = {}
    for run in json.loads(path.read_text())["runs"]:
        if run["pipeline"] == pipeline:
            cells.setdefault((run["regime"], run["fraction"]), {})[run["seed"]] = run
    return cells


def paired(arm: dict[int, dict], base: dict[int, dict], key: str) -> str:
    seeds = sorted(set(arm) & set(base))
    if len(seeds) < 2:
        return "n/a"
    d = paired_diff([100 * arm[s][key] for s in seeds], [100 * base[s][key] for s in seeds])
    return f"{d.mean:+.2f} [{d.t_low:+.2f}, {d.t_high:+.2f}]"


def main(here: Path, title: str) -> None:
    ssl_sl, mix_default = by_cell(PROTOCOL, "ssl+sl"), by_cell(PROTOCOL, "mix")
    print(f"# {title}: Fashion-MNIST 10,000-image pool, 10+10 epochs, 5 seeds (CPU)\n")
    print("Δ = the arm's mix − the protocol's ssl+sl (or its rho 0.5 mix), paired by seed, top-1")
    print("points, mean [95 % t CI]. Choices read val; test is read once per run and shown.")
    print("The cost is the FLOPs ratio; the wall ratio sets runs of two days against each other")
    print("(other load, other masking code for most ssl+sl runs): indicative only.\n")
    print(
        "| arm | regime | fraction | n | mix val | Δ val vs ssl+sl | Δ val vs rho 0.5 mix "
        "| mix test | Δ test vs ssl+sl | FLOPs ratio | verdict (val, FLOPs) | train wall ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arm_dir in sorted(p for p in here.iterdir() if (p / "compare.json").exists()):
        mix = by_cell(arm_dir / "compare.json", "mix")
        for cell in sorted(mix):
            runs, base = mix[cell], ssl_sl.get(cell, {})
            seeds = sorted(set(runs) & set(base))
            val = sum(r["val_top1"] for r in runs.values()) / len(runs)
            test = sum(r["top1"] for r in runs.values()) / len(runs)
            flops = sum(runs[s]["flops"] / base[s]["flops"] for s in seeds) / max(len(seeds), 1)
            wall = sum(
                runs[s]["result"]["train_wall_s"] / base[s]["result"]["train_wall_s"] for s in seeds
            ) / max(len(seeds), 1)
            diff = paired_diff(
                [100 * runs[s]["val_top1"] for s in seeds],
                [100 * base[s]["val_top1"] for s in seeds],
            )
            print(
                f"| {arm_dir.name} | {cell[0]} | {cell[1]:g} | {len(runs)} | {100 * val:.2f} "
                f"| {paired(runs, base, 'val_top1')} "
                f"| {paired(runs, mix_default.get(cell, {}), 'val_top1')} | {100 * test:.2f} "
                f"| {paired(runs, base, 'top1')} | {flops:.3f} | {verdict(diff, flops)} "
                f"| {wall:.2f} |"
            )

    for control_dir in sorted(here.glob("control-sslsl-*")):
        arm_dir = here / control_dir.name.removeprefix("control-sslsl-")
        control = by_cell(control_dir / "compare.json", "ssl+sl")
        mix = by_cell(arm_dir / "compare.json", "mix")
        print(f"\n## Control: {control_dir.name} (ssl+sl with the change of {arm_dir.name})\n")
        print(
            "| regime | fraction | ssl+sl val | Δ val vs the protocol's ssl+sl "
            "| mix − this ssl+sl, val | same, test | FLOPs ratio | verdict (val, FLOPs) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for cell in sorted(control):
            runs, arm = control[cell], mix.get(cell, {})
            seeds = sorted(set(arm) & set(runs))
            val = sum(r["val_top1"] for r in runs.values()) / len(runs)
            flops = sum(arm[s]["flops"] / runs[s]["flops"] for s in seeds) / max(len(seeds), 1)
            diff = paired_diff(
                [100 * arm[s]["val_top1"] for s in seeds],
                [100 * runs[s]["val_top1"] for s in seeds],
            )
            print(
                f"| {cell[0]} | {cell[1]:g} | {100 * val:.2f} "
                f"| {paired(runs, ssl_sl.get(cell, {}), 'val_top1')} "
                f"| {paired(arm, runs, 'val_top1')} | {paired(arm, runs, 'top1')} | {flops:.3f} "
                f"| {verdict(diff, flops)} |"
            )


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_ROOT / HERE.name
    main(folder, sys.argv[2] if len(sys.argv) > 2 else "rho at the protocol's scale")
