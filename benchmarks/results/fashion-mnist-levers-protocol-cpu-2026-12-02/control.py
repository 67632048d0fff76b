"""The layer-decay control: ssl+sl with layer decay 1.0 paired by seed with the protocol's ssl+sl
(what layer decay 1.0 does for the baseline), and mix with layer decay 1.0 paired with it (mix
against ssl+sl when both fine-tune without layer decay). Validation top-1 (where choices are
read), test beside it; points, mean [95 % t CI].

    python control.py benchmarks/results/fashion-mnist-levers-protocol-cpu-2026-12-02
"""

import json
import sys
from pathlib import Path

from mixfast.stats import paired_diff, verdict

here = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
protocol = here.parent / "fashion-mnist-protocol-cpu-2026-12-01" / "compare.json"


def by_cell(path: Path, pipeline: str) -> dict[tuple, dict[int, dict]]:
    cells: dict[tuple, dict[int, dict]] = {}
    for run in json.loads(path.read_text())["runs"]:
        if run["pipeline"] == pipeline:
            cells.setdefault((run["regime"], run["fraction"]), {})[run["seed"]] = run
    return cells


def paired(arm: dict[int, dict], base: dict[int, dict], key: str):
    seeds = sorted(set(arm) & set(base))
    return paired_diff([100 * arm[s][key] for s in seeds], [100 * base[s][key] for s in seeds])


def text(d) -> str:
    return f"{d.mean:+.2f} [{d.t_low:+.2f}, {d.t_high:+.2f}]"


base = by_cell(protocol, "ssl+sl")
control = by_cell(here / "control-sslsl-layer-decay1.0-dl" / "compare.json", "ssl+sl")
mix_ld1 = by_cell(here / "layer-decay1.0-dl" / "compare.json", "mix")
print("\n## Control: layer decay 1.0 for ssl+sl too (data-limited)\n")
print("| fraction | ssl+sl ld 1.0 val | Δ val vs protocol ssl+sl (ld 0.75) | mix ld 1.0 − ssl+sl ld 1.0 val "
      "| same, test | FLOPs ratio | verdict (val, FLOPs) |")  # fmt: skip
print("|---|---|---|---|---|---|---|")
for cell in sorted(control):
    runs, mix = control[cell], mix_ld1.get(cell, {})
    val = sum(r["val_top1"] for r in runs.values()) / len(runs)
    seeds = sorted(set(mix) & set(runs))
    flops = sum(mix[s]["flops"] / runs[s]["flops"] for s in seeds) / max(len(seeds), 1)
    d_val = paired(mix, runs, "val_top1")
    print(
        f"| {cell[1]:g} | {100 * val:.2f} | {text(paired(runs, base.get(cell, {}), 'val_top1'))} "
        f"| {text(d_val)} | {text(paired(mix, runs, 'top1'))} | {flops:.3f} "
        f"| {verdict(d_val, flops)} |"
    )
