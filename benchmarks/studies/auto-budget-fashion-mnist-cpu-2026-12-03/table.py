"""The budget screen's table: per folder (subset size, batch) and epoch budget, the mean
validation and test top-1 over seeds, the test values per seed, the SL optimizer steps and the
training-health words (mixfast/health.py) of the runs.

    python benchmarks/studies/auto-budget-fashion-mnist-cpu-2026-12-03/table.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from mixfast.health import run_health, summarize_health

DEFAULT = Path(__file__).resolve().parents[2] / "results" / Path(__file__).parent.name


def rows(folder: Path) -> list[str]:
    """A markdown row per (compare.json under `folder`, budget)."""
    out = []
    for report_path in sorted(folder.glob("**/compare.json")):
        report = json.loads(report_path.read_text())
        val_size = report["data"]["validation"]
        cells: dict[tuple, list[dict]] = {}
        for run in report["runs"]:
            cells.setdefault((run["pipeline"], run["budget"]), []).append(run)
        for (pipeline, _), runs in sorted(cells.items(), key=lambda c: (c[0][0], c[0][1] or 0)):
            result = runs[0]["result"]
            steps = result["budget"]["total"]["sl_samples"] // result["resolved"]["effective_batch"]
            per_seed = " / ".join(f"{100 * r['top1']:.2f}" for r in runs)
            health = [run_health(r["result"]["epochs"], val_size).word for r in runs]
            out.append(
                f"| {report_path.parent.relative_to(folder)} | {pipeline} | "
                f"{result['resolved']['effective_batch']} | "
                f"{result['resolved']['schedule']['ssl_epochs']} + "
                f"{result['resolved']['schedule']['sl_epochs']} | {steps} | "
                f"{100 * statistics.fmean(r['val_top1'] for r in runs):.2f} | "
                f"{100 * statistics.fmean(r['top1'] for r in runs):.2f} | "
                f"{per_seed} | "
                f"{summarize_health(health)} |"
            )
    return out


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(
        "| runs | pipeline | batch | epochs SSL + SL | SL steps | val % | test % | test per seed | health |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows(folder)))


if __name__ == "__main__":
    main()
