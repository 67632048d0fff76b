"""Every verdict of docs/results.md recomputed with the rule of mixfast.stats.verdict (issue 29):
accuracy better / tie / worse from the paired 95 % t interval, cost lower / equal / higher by
FLOPs with a margin of COST_MARGIN (1 %), "win" = better at equal or lower cost, "better,
dearer" = better at higher cost, "tie" = the interval holds 0, "loss" = worse; without FLOPs the
cost is "not measured" (wall time counts only on a CUDA device, none of these runs).

    python benchmarks/studies/verdicts-2026-12-03/recompute.py [OUT_DIR]

writes OUT_DIR/verdicts.md and OUT_DIR/verdicts.json (default:
benchmarks/results/verdicts-2026-12-03/). Each table is made as its own study made it:
- a compare.json's own table (the demo, the protocol, multi-task, the withdrawn 2026-11-25 run):
  mixfast.report.summarize on its runs with its settings, Δ on test top-1 as `mixfast compare`
  prints it; the old verdict is the one its `summary` stored;
- the rho, levers-protocol and ssl-share studies (their summarize.py,
  benchmarks/studies/fashion-mnist-rho-cpu-2026-12-02/summarize.py): each arm's mix runs paired
  by seed with the protocol's ssl+sl runs (the control table: the layer-decay arm's mix with the
  control's ssl+sl), Δ on validation top-1 (where the studies read their choices); the lever
  screen (fashion-mnist-levers-cpu-2026-12-02/summarize.py): each arm's mix with its base arm's
  ssl+sl, validation. The old verdict is the old rule on the same numbers (what their tables
  printed; the screen's table printed none).
The cost of a study pair is mixfast.report.cost_basis without settings: the two sides ran in
different `mixfast compare` calls, so wall time could never count.
"""

import json
import math
import sys
from pathlib import Path
from typing import Any

from mixfast.provenance import provenance
from mixfast.report import cost_basis, summarize
from mixfast.stats import COST_MARGIN, PairedDiff, Verdict, paired_diff, verdict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RESULTS_ROOT = ROOT / "benchmarks" / "results"
OUT = RESULTS_ROOT / HERE.name
PROTOCOL = "fashion-mnist-protocol-cpu-2026-12-01/compare.json"
COMMAND = "python benchmarks/studies/verdicts-2026-12-03/recompute.py"

# (title, compare.json under benchmarks/results/, where docs/results.md shows it)
OWN_TABLES = [
    ("The demo (make demo)", "fashion-mnist-demo-batch128-cpu-2026-12-02/demo/compare.json",
     "The demo"),
    ("The demo before batch 128", "fashion-mnist-demo-recipe-cpu-2026-12-02/demo/compare.json",
     "(not shown: the earlier demo)"),
    ("The comparison protocol", PROTOCOL, "Accuracy and cost: the comparison protocol"),
    ("Multi-task, coarse", "fashion-mnist-multitask-cpu-2026-12-02/coarse/compare.json",
     "Multi-task"),
    ("Multi-task, halves", "fashion-mnist-multitask-cpu-2026-12-02/halves/compare.json",
     "Multi-task"),
    ("Withdrawn 2026-11-25 run (no FLOPs recorded)", "fashion-mnist-cpu-2026-11-25/compare.json",
     "Withdrawn"),
]  # fmt: skip
# (title, study folder under benchmarks/results/, where docs/results.md shows it)
PROTOCOL_STUDIES = [
    ("rho at the protocol's scale", "fashion-mnist-rho-cpu-2026-12-02", "The mix step's levers"),
    ("Levers at the protocol's scale", "fashion-mnist-levers-protocol-cpu-2026-12-02",
     "The mix step's levers"),
    ("The SSL share of a mix step", "fashion-mnist-ssl-share-protocol-cpu-2026-12-02",
     "The mix step's levers"),
]  # fmt: skip
SCREEN = "fashion-mnist-levers-cpu-2026-12-02"


def old_verdict(diff: PairedDiff, cost_ratio: float) -> str:
    """The rule before issue 29: "win" needed the interval above 0 and cost_ratio < 1 (no
    margin), "loss" otherwise, better but not cheaper included."""
    if diff.t_low > 0 and cost_ratio < 1:
        return "win"
    if diff.t_low <= 0 <= diff.t_high:
        return "tie"
    return "loss"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def by_cell(runs: list[dict], pipeline: str) -> dict[tuple, dict[int, dict]]:
    cells: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        if run["pipeline"] == pipeline:
            cells.setdefault((run["regime"], run["fraction"]), {})[run["seed"]] = run
    return cells


def _number(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value


def entry(cell: str, basis: str, diff: dict[str, Any], found: Verdict, old: str | None) -> dict:
    """One cell: Δ with its t interval and n, the cost ratio and what decided, both verdicts."""
    return {
        "cell": cell,
        "basis": basis,
        "n": diff["n"],
        "mean": diff["mean"],
        "t_low": _number(diff["t_low"]),
        "t_high": _number(diff["t_high"]),
        "interval": f"95% t, n={diff['n']}",
        "accuracy": found.accuracy,
        "cost": found.cost,
        "cost_measure": found.cost_measure,
        "cost_ratio": found.cost_ratio,
        "old_verdict": old,
        "new_verdict": found.word,
        "changed": old is not None and old != found.word,
    }


def own_table(title: str, rel: str, where: str) -> dict[str, Any]:
    report = load(RESULTS_ROOT / rel)
    old_rows = {
        (r.get("regime", "data-limited"), r["fraction"], r.get("budget")): r.get("verdict")
        for r in report.get("summary") or []
    }
    cells = []
    for row in summarize(report["runs"], report):
        if "diff" not in row:
            continue
        key = (row["regime"], row["fraction"], row["budget"])
        found = verdict(_stored_diff(row["diff"]), row["cost_ratio"], row["cost_measure"])
        assert found.word == row["verdict"]  # summarize's verdict, its parts beside it
        name = f"{row['regime']} {row['fraction']:g}" + (
            "" if row["budget"] is None else f" budget {row['budget']}"
        )
        cells.append(entry(name, "test", row["diff"], found, old_rows.get(key)))
    return {"title": title, "source": f"benchmarks/results/{rel}", "where": where, "cells": cells}


def _stored_diff(stored: dict[str, Any]) -> PairedDiff:
    names = ("n", "mean", "sd", "t_low", "t_high", "boot_low", "boot_high")
    return PairedDiff(**{k: stored[k] for k in names})


def paired_cell(name: str, arm: dict[int, dict], base: dict[int, dict], old: bool) -> dict:
    seeds = sorted(set(arm) & set(base))
    mix, ssl_sl = [arm[s] for s in seeds], [base[s] for s in seeds]
    diff = paired_diff([100 * r["val_top1"] for r in mix], [100 * r["val_top1"] for r in ssl_sl])
    measure, ratio = cost_basis(mix, ssl_sl, None)
    found = verdict(diff, ratio, measure)
    before = old_verdict(diff, ratio) if old and ratio is not None else None
    return entry(name, "val", diff.to_dict(), found, before)


def study_table(title: str, folder: str, where: str) -> list[dict[str, Any]]:
    """Each arm's mix against the protocol's ssl+sl; a control-sslsl-<arm> folder adds a table
    of that arm's mix against the control's ssl+sl (the rho study's summarize.py)."""
    here = RESULTS_ROOT / folder
    ssl_sl = by_cell(load(RESULTS_ROOT / PROTOCOL)["runs"], "ssl+sl")
    cells = []
    for arm_dir in sorted(p for p in here.iterdir() if (p / "compare.json").exists()):
        mix = by_cell(load(arm_dir / "compare.json")["runs"], "mix")
        for cell in sorted(mix):
            name = f"{arm_dir.name} {cell[0]} {cell[1]:g}"
            cells.append(paired_cell(name, mix[cell], ssl_sl.get(cell, {}), old=True))
    source = f"benchmarks/results/{folder}/*/compare.json + {PROTOCOL} (ssl+sl)"
    tables = [{"title": title, "source": source, "where": where, "cells": cells}]
    for control_dir in sorted(here.glob("control-sslsl-*")):
        arm_dir = here / control_dir.name.removeprefix("control-sslsl-")
        control = by_cell(load(control_dir / "compare.json")["runs"], "ssl+sl")
        mix = by_cell(load(arm_dir / "compare.json")["runs"], "mix")
        cells = [
            paired_cell(f"{arm_dir.name} {c[0]} {c[1]:g}", mix.get(c, {}), control[c], old=True)
            for c in sorted(control)
        ]
        tables.append(
            {
                "title": f"{title}: control (mix of {arm_dir.name} vs {control_dir.name})",
                "source": f"benchmarks/results/{folder}/{arm_dir.name} + {control_dir.name}",
                "where": where,
                "cells": cells,
            }
        )
    return tables


def screen_table() -> dict[str, Any]:
    """The lever screen: each arm's mix against the base arm's ssl+sl (validation)."""
    here = RESULTS_ROOT / SCREEN
    ssl_sl = by_cell(load(here / "base" / "compare.json")["runs"], "ssl+sl")
    cells = []
    for arm_dir in sorted(p for p in here.iterdir() if (p / "compare.json").exists()):
        mix = by_cell(load(arm_dir / "compare.json")["runs"], "mix")
        for cell in sorted(mix):
            name = f"{arm_dir.name} {cell[0]} {cell[1]:g}"
            cells.append(paired_cell(name, mix[cell], ssl_sl.get(cell, {}), old=False))
    return {
        "title": "The lever screen (2,700-image pool; its table printed no verdict)",
        "source": f"benchmarks/results/{SCREEN}/*/compare.json (ssl+sl: base)",
        "where": "The mix step's levers",
        "cells": cells,
    }


def all_tables() -> list[dict[str, Any]]:
    tables = [own_table(*spec) for spec in OWN_TABLES]
    for spec in PROTOCOL_STUDIES:
        tables += study_table(*spec)
    tables.append(screen_table())
    return tables


def _interval(cell: dict[str, Any]) -> str:
    if cell["t_low"] is None:
        return f"{cell['mean']:+.2f} (1 seed)"
    return f"{cell['mean']:+.2f} [{cell['t_low']:+.2f}, {cell['t_high']:+.2f}]"


def markdown(tables: list[dict[str, Any]], record: dict[str, Any]) -> str:
    cells = [c for t in tables for c in t["cells"]]
    changed = [(t["title"], c) for t in tables for c in t["cells"] if c["changed"]]
    lines = [
        "# Every verdict of docs/results.md, recomputed (issue 29)",
        "",
        f"`{COMMAND}` (commit {record['commit']}). The rule (mixfast.stats.verdict): accuracy "
        "is **better** when the paired 95 % t interval of Δ = mix - ssl+sl is above 0, "
        "**worse** below 0, **tie** when it holds 0; cost is the ratio mix / ssl+sl by FLOPs "
        f"(every run here has them), **equal** within {COST_MARGIN:.0%} of 1, lower or higher "
        "beyond. **win** = better at equal or lower cost; **better, dearer** = better at higher "
        "cost (a trade-off, not a loss); **tie** = the interval holds 0; **loss** = worse; "
        "without FLOPs (the withdrawn run) the cost is **not measured**: wall time counts only "
        "on a CUDA device with the pipeline order rotated. The old rule: win = interval above "
        "0 and FLOPs ratio < 1 (no margin), tie = interval holds 0, loss = otherwise (better "
        "but not cheaper included; without FLOPs, the CPU wall-time ratio).",
        "",
        "Basis: test = a compare.json's own table (Δ on test top-1, as `mixfast compare` "
        "prints it); val = a study's table (Δ on validation top-1, where its choices were read; "
        "mix of the arm paired by seed with the protocol's ssl+sl, or the base arm's in the "
        "screen). Intervals: 95 % Student t over n paired seeds. Old verdict — : the table "
        "printed none. FLOPs ratio: mean mix FLOPs / mean ssl+sl FLOPs, three decimals.",
        "",
        f"**{len(changed)} of {sum(c['old_verdict'] is not None for c in cells)} verdicts "
        "change**" + (":" if changed else "."),
        "",
    ]
    lines += [f"- {title}, {c['cell']}: {c['old_verdict']} -> {c['new_verdict']}"
              for title, c in changed]  # fmt: skip
    for table in tables:
        lines += ["", f"## {table['title']}", "", f"Source: `{table['source']}`; "
                  f"docs/results.md: {table['where']}.", ""]  # fmt: skip
        lines += [
            "| cell | basis | Δ (95% t) | n | FLOPs ratio | cost | old verdict | new verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in table["cells"]:
            ratio = "-" if c["cost_ratio"] is None else f"{c['cost_ratio']:.3f}"
            cost = c["cost"] + (f" ({c['cost_measure']})" if c["cost_measure"] else "")
            new = f"**{c['new_verdict']}**" if c["changed"] else c["new_verdict"]
            lines.append(
                f"| {c['cell']} | {c['basis']} | {_interval(c)} | {c['n']} | {ratio} | {cost} "
                f"| {c['old_verdict'] or '—'} | {new} |"
            )
    return "\n".join(lines) + "\n"


def main(out: Path) -> None:
    record = provenance(ROOT)
    tables = all_tables()
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **record,
        "rerun": COMMAND,
        "rule": "mixfast.stats.verdict",
        "cost_margin": COST_MARGIN,
    }
    (out / "verdicts.json").write_text(json.dumps({**payload, "tables": tables}, indent=1) + "\n")
    (out / "verdicts.md").write_text(markdown(tables, record))
    print(f"wrote {out / 'verdicts.md'} and {out / 'verdicts.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
