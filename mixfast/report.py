"""What `mixfast compare` concludes: per regime, label fraction and budget, each pipeline's
top-1 with its 95 % confidence interval, the paired difference mix - ssl+sl over seeds with its
95 % t interval (and a bootstrap from 5 seeds up), the cost ratios (FLOPs, training time) and a
verdict whose accuracy and cost parts stay visible; the table; the accuracy-against-cost
frontiers of compare.png."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixfast.health import DROP_SE, RISE_SE, summarize_health
from mixfast.schedule import PIPELINES
from mixfast.stats import COST_MARGIN, MIN_VERDICT_SEEDS, paired_diff, t_quantile_975, verdict

Run = dict[str, Any]


def _group_key(run: Run) -> tuple:
    return (run.get("regime", "data-limited"), run["fraction"], run.get("budget"))


def _mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _pipeline_stats(runs: list[Run]) -> dict[str, Any]:
    top1, top1_ci = _mean_ci([r["top1"] for r in runs])
    stats = {"n": len(runs), "top1": top1, "top1_ci": top1_ci}
    if all("val_top1" in r for r in runs):
        stats["val_top1"] = statistics.fmean(r["val_top1"] for r in runs)
    stats["wall_s"] = statistics.fmean(r["wall_s"] for r in runs)
    if all("flops" in r for r in runs):
        stats["flops"] = statistics.fmean(r["flops"] for r in runs)
        stats["passes"] = runs[0].get("passes")
    if all("health" in r for r in runs):
        stats["health"] = summarize_health([r["health"]["word"] for r in runs])
    per_task = [r.get("top1_tasks") or [] for r in runs]
    if len(per_task[0]) > 1 and all(len(t) == len(per_task[0]) for t in per_task):
        stats["top1_tasks"] = [_mean_ci(list(values)) for values in zip(*per_task)]
    return stats


def summarize(runs: Sequence[Run], settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per (regime, fraction, budget): per-pipeline stats and mix vs ssl+sl. `settings`
    (compare.json's, or compare's before it is written) say whether wall time may stand for the
    cost where FLOPs are missing (see cost_basis); without them it may not."""
    rows = []
    for key in sorted({_group_key(r) for r in runs}, key=lambda k: (k[0], k[1], k[2] or 0)):
        regime, fraction, budget = key
        row: dict[str, Any] = {"regime": regime, "fraction": fraction, "budget": budget}
        chosen = [r for r in runs if _group_key(r) == key]
        for pipeline in PIPELINES:
            mine = [r for r in chosen if r["pipeline"] == pipeline]
            if mine:
                row[pipeline] = _pipeline_stats(mine)
        if "mix" in row and "ssl+sl" in row:
            row.update(_mix_vs_ssl_sl(chosen, settings))
        rows.append(row)
    return rows


def on_cuda(settings: dict[str, Any] | None) -> bool:
    """Whether the settings' "device" names a CUDA device. compare writes "cpu (N cores)" on a
    CPU and torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3") on CUDA; "cuda:0"
    counts too. Missing, empty, cpu, mps, xpu and auto do not."""
    device = str((settings or {}).get("device") or "").strip().lower()
    return bool(device) and not device.startswith(("cpu", "mps", "xpu", "auto", "meta"))


def order_rotated(settings: dict[str, Any] | None) -> bool:
    """Whether mix and ssl+sl ran in one compare grid, whose pipeline order rotates per seed:
    the settings' "pipelines" hold both, and the protocol text, where the settings carry one
    (compare.json does), says the order rotates (the 2026-11-25 files, made before, do not)."""
    settings = settings or {}
    pipelines = settings.get("pipelines") or []
    protocol = settings.get("protocol")
    said = protocol is None or "rotates" in str(protocol)
    return "mix" in pipelines and "ssl+sl" in pipelines and said


def cost_basis(
    mix: Sequence[Run], base: Sequence[Run], settings: dict[str, Any] | None
) -> tuple[str | None, float | None]:
    """(measure, ratio mix / ssl+sl) the verdict weighs: FLOPs when every run has them; wall
    time only on a CUDA device with the pipeline order rotated (on a shared CPU it is not
    evidence); otherwise (None, None): the cost is not measured, never a silent fallback."""
    if all("flops" in r for r in [*mix, *base]):
        return "FLOPs", _ratio(mix, base, "flops")
    if on_cuda(settings) and order_rotated(settings):
        return "wall time", _ratio(mix, base, "wall_s")
    return None, None


def _ratio(mix: Sequence[Run], base: Sequence[Run], key: str) -> float:
    return statistics.fmean(r[key] for r in mix) / max(statistics.fmean(r[key] for r in base), 1e-9)


def _mix_vs_ssl_sl(runs: list[Run], settings: dict[str, Any] | None) -> dict[str, Any]:
    by_seed = {p: {r["seed"]: r for r in runs if r["pipeline"] == p} for p in ("mix", "ssl+sl")}
    seeds = sorted(set(by_seed["mix"]) & set(by_seed["ssl+sl"]))
    mix = [by_seed["mix"][s] for s in seeds]
    base = [by_seed["ssl+sl"][s] for s in seeds]
    diff = paired_diff([100 * r["top1"] for r in mix], [100 * r["top1"] for r in base])
    out: dict[str, Any] = {"diff": diff.to_dict(), "wall_ratio": _ratio(mix, base, "wall_s")}
    if all("flops" in r for r in mix + base):
        out["flops_ratio"] = _ratio(mix, base, "flops")
        out["passes_equal"] = all(m.get("passes") == b.get("passes") for m, b in zip(mix, base))
    measure, ratio = cost_basis(mix, base, settings)
    found = verdict(diff, ratio, measure)
    out.update(
        verdict=found.word,  # a string, as before; its parts beside it
        accuracy=found.accuracy,
        cost=found.cost,
        cost_measure=found.cost_measure,
        cost_ratio=found.cost_ratio,
        cost_margin=found.margin,
    )
    return out


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    text = _mean_text(stats["top1"], stats["top1_ci"], stats["n"])
    if "top1_tasks" in stats:  # several tasks: the average, then each task's
        tasks = " / ".join(_mean_text(m, ci, stats["n"]) for m, ci in stats["top1_tasks"])
        text += f" ({tasks})"
    return text


def _mean_text(mean: float, half_width: float, n: int) -> str:
    return f"{100 * mean:.2f} ± {100 * half_width:.2f}" if n > 1 else f"{100 * mean:.2f}"


def _cost_cell(row: dict[str, Any]) -> str:
    measure = row.get("cost_measure")
    return f"{row['cost']} ({measure})" if measure else row["cost"]


def _health_cell(row: dict[str, Any], pipelines: Sequence[str]) -> str:
    """The pipelines whose validation curves did not settle, e.g. "sl still rising 2/3";
    "settled" when all did; "-" for runs recorded before health was."""
    healths = {p: row[p]["health"] for p in pipelines if "health" in row.get(p, {})}
    if not healths:
        return "-"
    unsettled = [f"{p} {h}" for p, h in healths.items() if h != "settled"]
    return "; ".join(unsettled) if unsettled else "settled"


def format_table(runs: Sequence[Run], settings: dict[str, Any] | None = None) -> str:
    present = [p for p in PIPELINES if any(r["pipeline"] == p for r in runs)]
    summary = summarize(runs, settings)
    budgets = any(row["budget"] is not None for row in summary)
    sizes = {row["diff"]["n"] for row in summary if "diff" in row}
    header = ["regime", "fraction"] + (["budget"] if budgets else [])
    header += [f"{p} test %" for p in present]
    shared_n = len(sizes) == 1
    delta = f"Δ mix-ssl+sl (95% t, n={sizes.pop()})" if shared_n else "Δ mix-ssl+sl (95% t)"
    header += [delta, "verdict", f"cost (±{COST_MARGIN:.0%} equal)", "FLOPs ratio", "time ratio"]
    header += ["passes ssl/sl", "health"]
    lines = []
    for row in summary:
        cells = [row["regime"], f"{row['fraction']:g}"]
        cells += [str(row["budget"])] if budgets else []
        cells += [_cell(row.get(p)) for p in present]
        diff = row.get("diff")
        if diff is None:
            cells += ["-", "-", "-", "-", "-"]
        else:
            interval = (
                f"[{diff['t_low']:+.2f}, {diff['t_high']:+.2f}]" if diff["n"] > 1 else "(1 seed)"
            )
            size = "" if shared_n else f" n={diff['n']}"
            cells.append(f"{diff['mean']:+.2f} {interval}{size}")
            cells.append(row["verdict"])
            cells.append(_cost_cell(row))
            cells.append(f"{row['flops_ratio']:.3f}" if "flops_ratio" in row else "-")
            cells.append(f"{row['wall_ratio']:.3f}")
        passes = (row.get("mix") or row.get("ssl+sl") or {}).get("passes")
        same = "" if row.get("passes_equal", True) else " (differ!)"
        cells.append(f"{passes['ssl']}/{passes['sl']}{same}" if passes else "-")
        cells.append(_health_cell(row, present))
        lines.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    out = ["  ".join(c.rjust(w) for c, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


LEGEND = (
    "test %: mean ± 95% t half-width over seeds; Δ: mix - ssl+sl test top-1 in points, paired "
    "by seed, with its 95% t interval over n seeds (compare.json adds a percentile bootstrap "
    "from 5 seeds up). Verdict: accuracy is better when the t interval is above 0, worse below, "
    "tie when it holds 0; cost is mix / ssl+sl by FLOPs when every run has them, else by "
    "training time only on a CUDA device with the pipeline order rotated, else not measured; "
    f"it is equal within {COST_MARGIN:.0%} of 1, lower or higher beyond. win = better at equal "
    "or lower cost; better, dearer = better at higher cost (a trade-off); better (cost not "
    "measured) = better, cost unknown; tie = interval holds 0; loss = worse; inconclusive (n "
    f"seeds) = fewer than {MIN_VERDICT_SEEDS} seeds: no verdict, whatever the interval. "
    "Ratios: mix / "
    "ssl+sl (FLOPs: forward + backward model FLOPs; time: training seconds, evaluation apart; "
    "on a CPU shared with other work time is not evidence). passes: sample passes per objective "
    "of mix (equal to ssl+sl's by construction). With several tasks, test % is the average over "
    "tasks (each task's in brackets, in task order) and Δ is that of the average. health: how "
    "each pipeline's validation curve ended, against the validation split's standard error se "
    f"(mixfast/health.py): still rising = its last quarter {RISE_SE:g} se or more above the "
    f"quarter before (under-trained: raise the budget); peaked early = final {DROP_SE:g} se or "
    "more below a best before the last quarter (over-fitting); settled otherwise"
)


def print_table(runs: Sequence[Run], settings: dict[str, Any]) -> None:
    seeds = len(settings["seeds"])
    counts = settings.get("seed_counts") or {}
    fewer = "".join(f", {n} at fraction {f}" for f, n in counts.items())
    print(f"\n{settings['dataset']} on {settings['device']}, {seeds} seed(s) per cell{fewer}")
    print(format_table(runs, settings))
    print(LEGEND)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, top1) points no other point beats on both: less cost and higher accuracy."""
    front: list[tuple[float, float]] = []
    for cost, top1 in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or top1 > front[-1][1]:
            front.append((cost, top1))
    return front


COLORS = {"sl": "tab:gray", "ssl+sl": "tab:blue", "mix": "tab:red"}


def plot(runs: Sequence[Run], path: Path, settings: dict[str, Any]) -> None:
    """One column per (regime, fraction); top row: test top-1 against training TFLOPs, bottom
    row: against training seconds; one line per pipeline through its budgets (seed means)."""
    plt = _pyplot()

    panels = sorted({_group_key(r)[:2] for r in runs})
    tasks = max((len(r.get("top1_tasks") or []) for r in runs), default=1)
    ylabel = f"test top-1, mean of {tasks} tasks (%)" if tasks > 1 else "test top-1 (%)"
    most = max((r.get("flops", 0) for r in runs), default=0)
    unit, scale = ("TFLOPs", 1e-12) if most >= 1e12 else ("GFLOPs", 1e-9)
    costs = [("flops", f"training {unit}", scale), ("wall_s", "training time (s)", 1.0)]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.2), squeeze=False)
    for col, (regime, fraction) in enumerate(panels):
        mine = [r for r in runs if _group_key(r)[:2] == (regime, fraction)]
        for row_index, (key, label, scale) in enumerate(costs):
            ax = axes[row_index][col]
            for pipeline in PIPELINES:
                points = _frontier(mine, pipeline, key)
                if points:
                    xs = [scale * x for x, _ in points]
                    ax.plot(xs, [100 * y for _, y in points], "o-", color=COLORS[pipeline],
                            label=pipeline)  # fmt: skip
            ax.set_title(f"{regime}, labels {fraction:g}", fontsize=9)
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    _save(fig, path, f"{settings['dataset']} on {settings['device']}")


def plot_curves(runs: Sequence[Run], path: Path, settings: dict[str, Any]) -> None:
    """Each run's validation top-1 against its epoch (the rows of its metrics.jsonl), one
    column per (regime, fraction), a colour per pipeline, a line per seed and budget: beside
    compare.png, to see whether a pipeline was still rising or had peaked when it stopped."""
    plt = _pyplot()

    panels = sorted({_group_key(r)[:2] for r in runs})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (regime, fraction) in zip(axes[0], panels):
        for run in (r for r in runs if _group_key(r)[:2] == (regime, fraction)):
            rows = [row for row in run["result"]["epochs"] if row["val_top1"] is not None]
            epochs = [row["epoch"] for row in rows]
            ax.plot(epochs, [100 * row["val_top1"] for row in rows], ".-", alpha=0.7,
                    color=COLORS[run["pipeline"]], label=run["pipeline"])  # fmt: skip
        handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry a pipeline
        ax.legend(handles.values(), handles.keys(), fontsize=8)
        ax.set_title(f"{regime}, labels {fraction:g}", fontsize=9)
        ax.set_xlabel("epoch of the plan")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
    _save(fig, path, f"{settings['dataset']}: validation top-1 of every run")


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def _frontier(runs: list[Run], pipeline: str, cost_key: str) -> list[tuple[float, float]]:
    """(mean cost, mean test top-1) of `pipeline` at each budget, by increasing cost."""
    points = []
    for budget in sorted({r.get("budget") or 0 for r in runs}):
        mine = [r for r in runs if r["pipeline"] == pipeline and (r.get("budget") or 0) == budget]
        if mine and all(cost_key in r for r in mine):
            points.append(
                (
                    statistics.fmean(r[cost_key] for r in mine),
                    statistics.fmean(r["top1"] for r in mine),
                )
            )
    return sorted(points)
