"""The screen's and demos' rows as README.md shows them: per run folder and pipeline x fraction,
mean validation and test top-1 over seeds, test per seed, seconds per run, TFLOPs.

    python benchmarks/studies/fashion-mnist-demo-batch128-cpu-2026-12-02/table.py \
        benchmarks/results/fashion-mnist-demo-batch128-cpu-2026-12-02/screen
"""

import glob
import json
import statistics
import sys


def main(folder: str) -> None:
    for path in sorted(glob.glob(f"{folder}/*/compare.json")):
        cells: dict[tuple, list] = {}
        with open(path) as f:
            runs_all = json.load(f)["runs"]
        for run in runs_all:
            cells.setdefault((run["pipeline"], run["fraction"]), []).append(run)
        for (pipeline, fraction), runs in cells.items():
            val = 100 * statistics.mean(r["val_top1"] for r in runs)
            test = 100 * statistics.mean(r["top1"] for r in runs)
            print(
                f"{path.split('/')[-2]:14s} {pipeline:7s} {fraction:5} val {val:6.2f} "
                f"test {test:6.2f}",
                f"per-seed {[round(100 * r['top1'], 2) for r in runs]}",
                f"s {[round(r['wall_s'], 1) for r in runs]} TFLOPs {runs[0]['flops'] / 1e12:.2f}",
            )


if __name__ == "__main__":
    main(sys.argv[1])
