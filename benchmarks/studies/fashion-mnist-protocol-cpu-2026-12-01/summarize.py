"""Print the protocol's table (mixfast.report) from compare.json, with seeds per cell.

    python benchmarks/studies/fashion-mnist-protocol-cpu-2026-12-01/summarize.py [compare.json]

Default: the study's compare.json in benchmarks/results/fashion-mnist-protocol-cpu-2026-12-01/.
"""

import json
import sys
from collections import Counter
from pathlib import Path

from mixfast.report import LEGEND, format_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "results" / HERE.name  # benchmarks/results/<this folder's name>


def main(path: Path) -> None:
    runs = json.loads(path.read_text())["runs"]
    print(format_table(runs))
    print(LEGEND)
    cells = Counter((r["regime"], r["fraction"], r["pipeline"]) for r in runs)
    print("seeds per cell:", {f"{k[0]} {k[1]:g} {k[2]}": v for k, v in sorted(cells.items())})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "compare.json")
