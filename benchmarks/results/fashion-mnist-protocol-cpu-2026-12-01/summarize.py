"""Print the protocol's table (mixfast.report) from compare.json, with seeds per cell."""

import json
import sys
from collections import Counter
from pathlib import Path

from mixfast.report import LEGEND, format_table

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("compare.json"))
runs = json.loads(path.read_text())["runs"]
print(format_table(runs))
print(LEGEND)
cells = Counter((r["regime"], r["fraction"], r["pipeline"]) for r in runs)
print("seeds per cell:", {f"{k[0]} {k[1]:g} {k[2]}": v for k, v in sorted(cells.items())})
