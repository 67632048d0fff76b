"""The head-rule study's table from its two compare.json files (keep, auto), in markdown.

    python table.py RESULTS_DIR

Per seed and paired (keep - auto, points, 95 % t over seeds): validation top-1 after the first
epoch (from each run's metrics.jsonl) and at the end, and test top-1 (read once, at the end).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mixfast.stats import paired_diff


def runs_of(folder: Path) -> dict[int, dict]:
    """seed -> {"first": val top-1 after epoch 1, "val": final val, "test": test top-1}."""
    report = json.loads((folder / "compare.json").read_text())
    out = {}
    for run in report["runs"]:
        rows = (folder / Path(run["run_dir"]).name / "metrics.jsonl").read_text().splitlines()
        first = json.loads(rows[0])["val_top1"]
        out[run["seed"]] = {"first": first, "val": run["val_top1"], "test": run["top1"]}
    return out


def main(results: Path) -> None:
    keep, auto = runs_of(results / "keep"), runs_of(results / "auto")
    seeds = sorted(set(keep) & set(auto))
    print("| measure | keep % (mean) | auto % (mean) | keep - auto (95% t) | per seed |")
    print("|---|---:|---:|---:|---|")
    for key, what in (("first", "val top-1 after epoch 1"), ("val", "val top-1, end"),
                      ("test", "test top-1, end")):  # fmt: skip
        k = [100 * keep[s][key] for s in seeds]
        a = [100 * auto[s][key] for s in seeds]
        diff = paired_diff(k, a)
        per_seed = ", ".join(f"{x - y:+.1f}" for x, y in zip(k, a))
        print(
            f"| {what} | {sum(k) / len(k):.2f} | {sum(a) / len(a):.2f} "
            f"| {diff.mean:+.2f} [{diff.t_low:+.2f}, {diff.t_high:+.2f}] | {per_seed} |"
        )
    print(f"\n{len(seeds)} seeds: {seeds}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
