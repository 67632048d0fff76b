"""The benchmark scripts' shared harness: environment record, timers, argparse, table and JSON.

A bench_<op>.py script is its cases, its implementations and a short main():

    parser = harness.BenchParser(__doc__, __file__, dtype="bf16", impls=IMPLS, time_budget=100.0)
    parser.add_argument(...)          # the script's own options
    args = parser.parse_args(argv)    # .device, .dtype (a torch.dtype), .impls (a list),
                                      # .time_budget, .json, .command
    harness.run(args, points, COLUMNS, title=..., fields=..., summarize=...)

`run` measures the points `(labels, measure)` in order: a row is the labels plus what `measure()`
returns; an exception becomes the row's "error", and a point reached after --time-budget seconds
is skipped. Each row is printed as it comes, and the --json file is rewritten after every row
(a run cut short by a timeout keeps what it measured) as
{"environment": ..., "commit": ..., "command": ..., <fields>, "results": [rows], <summary>};
"commit" is the git commit of the checkout whose mixfast ran ("-dirty" with uncommitted changes,
null when it is not a checkout: mixfast.provenance).

Why a module of its own and not conftest.py: conftest.py is pytest's (hooks and fixtures; it
imports pytest, and tests/ has a conftest.py too, so `import conftest` can name either), while
this file is plain Python for the scripts; conftest.py imports its environment record from here.
Import it as `import harness`: a script's own folder is on sys.path, and pytest puts this folder
there before it imports conftest.py (benchmarks/ has no __init__.py, also when it is installed
as mixfast.benchmarks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# A source checkout without an install: let the scripts import its mixfast (an installed or
# PYTHONPATH copy, as bench_host_overhead.py --against uses, keeps precedence).
_SOURCE_ROOT = Path(__file__).resolve().parents[1]
if (
    importlib.util.find_spec("mixfast") is None
    and (_SOURCE_ROOT / "mixfast" / "__init__.py").is_file()
):
    sys.path.append(str(_SOURCE_ROOT))

try:
    from mixfast.provenance import git_commit
except ImportError:  # a mixfast from before provenance.py first on the path: commit unknown

    def git_commit(path: str | os.PathLike | None = None) -> str | None:
        return None


Point = tuple[Mapping[str, Any], Callable[[], Mapping[str, Any]]]

# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------

PEAK_BW_GBPS = (  # (device name substring, HBM GB/s); the first match wins
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100", 2000.0),
)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_bw_gbps(name: str) -> float | None:
    """The HBM bandwidth of a device named `name` (GB/s), None when not listed (CPUs)."""
    return next((bw for key, bw in PEAK_BW_GBPS if key in name), None)


def environment(device: str | torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """Device name, peak bandwidth and versions (what any published figure must name), + extra."""
    if device is None:
        device = default_device()
    info: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    info["peak_bw_GBps"] = peak_bw_gbps(info["device"])
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import mixfast

        info["mixfast"] = mixfast.build_info()
    except Exception as exc:  # a benchmark must still record where it ran
        info["mixfast"] = f"unavailable: {exc}"
    info.update(extra)
    return info


# ----------------------------------------------------------------------------------------------
# Timers
# ----------------------------------------------------------------------------------------------


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    fn: Callable[[], Any], device: str | torch.device, warmup: int = 5, reps: int = 50
) -> dict[str, float]:
    """Median and min milliseconds per fn() call. CPU (and meta): each call timed and waited
    for. CUDA: 10 rounds of `reps` back-to-back calls between CUDA events (launch overhead
    overlaps, as in a training step), per call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    if torch.device(device).type == "cuda":
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
    else:
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": reps}


def quantiles_ms(
    run: Callable[[], Any],
    device: str | torch.device,
    budget_ms: float = 100.0,
    warmup_ms: float = 10.0,
    max_samples: int = 30,
) -> list[float]:
    """[median, q20, q80] ms per run(), the first call (compile / autotune) excluded. CUDA:
    triton's do_bench (CUDA events, L2 flushed); CPU: each call timed, for `budget_ms` or
    `max_samples` calls (at least 3)."""
    run()
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        torch.cuda.synchronize()
        return list(do_bench(run, warmup=warmup_ms, rep=budget_ms, quantiles=[0.5, 0.2, 0.8]))
    samples, deadline = [], time.perf_counter() + budget_ms / 1e3
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < max_samples):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(samples, n=10)
    return [statistics.median(samples), deciles[1], deciles[7]]


def graph_quantiles_ms(
    run: Callable[[], Any], budget_ms: float = 100.0, warmup_ms: float = 25.0
) -> list[float]:
    """[median, q20, q80] ms of run() captured in a CUDA graph and replayed: the GPU time alone.
    Eager calls of small ops (fwd+bwd through autograd, Python glue) are bound by host overhead,
    which hides the kernels' own speed. CUDA only."""
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # autograd needs a warm-up on a side stream before capture
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return list(do_bench(graph.replay, warmup=warmup_ms, rep=budget_ms, quantiles=[0.5, 0.2, 0.8]))


def round_robin_ms(
    steps: Mapping[str, Callable[[int], Any]],
    device: str | torch.device,
    warmup: int,
    iters: int,
) -> dict[str, dict[str, float]]:
    """Time the steps in turn (A, B, C, A, B, C, ..., who goes first rotating) so that drift hits
    them all alike; step(i) gets the iteration number. Per step: median and min ms of the
    `iters` calls after `warmup`, and the first call's seconds (compilation included)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    first_s: dict[str, float] = {}
    names = list(steps)
    for i in range(warmup + iters):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            steps[name](i)
            synchronize(device)
            elapsed = time.perf_counter() - start
            if i == 0:
                first_s[name] = elapsed
            if i >= warmup:
                times[name].append(elapsed * 1e3)
    return {
        name: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "reps": len(t),
            "first_call_s": first_s[name],
        }
        for name, t in times.items()
    }


# ----------------------------------------------------------------------------------------------
# Row figures
# ----------------------------------------------------------------------------------------------


def timing(
    quantiles: Sequence[float],
    flops: float | None = None,
    nbytes: float | None = None,
    peak_gbps: float | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Row fields of a [median, q20, q80] ms timing: the times, and the rates of the median
    (TFLOP/s of `flops`, GB/s of `nbytes` and its % of `peak_gbps`), each key `prefix`ed."""
    median, q20, q80 = quantiles
    row = {f"{prefix}median_ms": median, f"{prefix}q20_ms": q20, f"{prefix}q80_ms": q80}
    if flops is not None:
        row[f"{prefix}tflops"] = flops / median / 1e9
    if nbytes is not None:
        row[f"{prefix}gbps"] = nbytes / median / 1e6
        if peak_gbps:
            row[f"{prefix}pct_peak_bw"] = 100 * row[f"{prefix}gbps"] / peak_gbps
    return row


def max_abs_diff(results: Any, reference: Sequence[torch.Tensor] | None) -> float:
    """Largest |result - reference| over a tensor or tensors; nan without a reference."""
    if reference is None:
        return float("nan")
    results = [results] if isinstance(results, torch.Tensor) else list(results)
    return max((r.float() - w).abs().max().item() for r, w in zip(results, reference))


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


def speedups(
    rows: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    timing: str = "median_ms",
    ours: str = "mixfast",
) -> dict[str, dict[str, Any]]:
    """Per value of `keys` (joined by spaces, sorted): {"peer": the fastest other impl,
    "speedup": its `timing` over ours}, where both were timed."""
    timed: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if timing in row:
            timed.setdefault(tuple(row[k] for k in keys), {})[row["impl"]] = row[timing]
    result = {}
    for key in sorted(timed):
        peers = {name: t for name, t in timed[key].items() if name != ours}
        if ours in timed[key] and peers:
            best = min(peers, key=peers.get)
            result[" ".join(key)] = {"peer": best, "speedup": peers[best] / timed[key][ours]}
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def comma_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated subset of `choices`, in the order given."""
    choices = list(choices)

    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a comma-separated subset of {','.join(choices)}"
            )
        return names

    return parse


def command_line(script: str, argv: Sequence[str]) -> str:
    """`python <script> <args>`, the script relative to the working directory when under it."""
    path = Path(script).resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join(["python", str(path), *argv])


class BenchParser(argparse.ArgumentParser):
    """The options every script shares. Always --json/--out PATH; --device (default: cuda when a
    GPU is visible) and --threads unless turned off; --dtype, --impls and --time-budget (alias
    --budget-s) when given a default. parse_args() turns --dtype into a torch.dtype, --impls
    into a list, applies --threads and adds .command (the command line, for the JSON)."""

    def __init__(
        self,
        doc: str,
        script: str,
        *,
        device: bool = True,
        threads: bool = True,
        dtype: str | None = None,
        impls: Iterable[str] | None = None,
        default_impls: Iterable[str] | None = None,
        time_budget: float | None = None,
    ) -> None:
        summary, _, details = doc.strip().partition("\n\n")
        super().__init__(
            description=summary,
            epilog=details or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.script = script
        if device:
            self.add_argument("--device", default=default_device(), help="default: %(default)s")
        if dtype is not None:
            self.add_argument("--dtype", default=dtype, choices=tuple(DTYPES))
        if impls is not None:
            impls = list(impls)
            default = list(default_impls or impls)
            self.add_argument(
                "--impls",
                type=comma_list(impls),
                default=default,
                help=f"comma-separated, of {','.join(impls)} (default: {','.join(default)})",
            )
        if time_budget is not None:
            self.add_argument(
                "--time-budget",
                "--budget-s",
                type=float,
                default=time_budget,
                help="seconds; the runs that would start later are skipped (default: %(default)s)",
            )
        if threads:
            self.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
        self.add_argument(
            "--json", "--out", metavar="PATH", help="write the results here (JSON, kept current)"
        )

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        parsed.command = command_line(self.script, sys.argv[1:] if args is None else args)
        if isinstance(getattr(parsed, "dtype", None), str):
            parsed.dtype = DTYPES[parsed.dtype]
        if getattr(parsed, "threads", None):
            torch.set_num_threads(parsed.threads)
        return parsed


# ----------------------------------------------------------------------------------------------
# Table and JSON
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: `key` is a row field, a path of fields into nested dicts (a tuple) or a
    function of the row; `spec` a format spec of a number (right-aligned; without one the value
    is text, left-aligned), `suffix` text after the number. A missing value prints as "-"."""

    title: str
    key: str | tuple[str, ...] | Callable[[Mapping[str, Any]], Any]
    width: int
    spec: str = ""
    suffix: str = ""

    def value(self, row: Mapping[str, Any]) -> Any:
        if callable(self.key):
            return self.key(row)
        value: Any = row
        for name in (self.key,) if isinstance(self.key, str) else self.key:
            value = value.get(name) if isinstance(value, Mapping) else None
        return value

    def cell(self, row: Mapping[str, Any]) -> str:
        value = self.value(row)
        if value is None:
            text = "-"
        elif self.spec:
            text = format(value, self.spec) + self.suffix
        else:
            text = str(value)
        return self._align(text)

    def _align(self, text: str) -> str:
        return text.rjust(self.width) if self.spec else text.ljust(self.width)


class Table:
    """Fixed-width text table (or a Markdown one); a row with an "error" prints its leading
    columns (its labels) and the error."""

    def __init__(self, columns: Sequence[Column], markdown: bool = False) -> None:
        self.columns, self.markdown = list(columns), markdown

    def _join(self, cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |" if self.markdown else " ".join(cells)

    def header(self) -> str:
        line = self._join([c._align(c.title) for c in self.columns])
        if not self.markdown:
            return line
        return line + "\n|" + "|".join("-" * (c.width + 2) for c in self.columns) + "|"

    def line(self, row: Mapping[str, Any]) -> str:
        if "error" not in row:
            return self._join([c.cell(row) for c in self.columns])
        cells = []
        for column in self.columns:
            if column.value(row) is None:
                break
            cells.append(column.cell(row))
        return self._join([*cells, str(row["error"])[:70]])


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write `payload` to `path` whole (through a temporary file), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def summary_lines(summary: Mapping[str, Any]) -> Iterator[str]:
    """`<field> <key>: <value>` per entry of each summary field; speedup records as `1.23x vs X`
    and a dict of them as `eager 1.23x vs X | graph ...`."""
    for field, value in summary.items():
        if not isinstance(value, Mapping):
            yield f"{field}: {value}"
            continue
        for key, item in value.items():
            yield f"{field} {key}: {_describe(item)}"


def _describe(item: Any) -> str:
    if isinstance(item, Mapping) and "peer" in item and "speedup" in item:
        return f"{item['speedup']:.2f}x vs {item['peer']}"
    if isinstance(item, Mapping) and item and all(isinstance(v, Mapping) for v in item.values()):
        if all("speedup" in v for v in item.values()):
            return " | ".join(f"{label} {_describe(v)}" for label, v in item.items())
    return str(item)


class Report:
    """Prints the title and the table header, then each row as it is added, and keeps the JSON
    file (args.json, if set) current: {"environment", "commit", "command", <fields>, "results",
    <summary>}."""

    def __init__(
        self,
        args: argparse.Namespace,
        columns: Sequence[Column],
        *,
        env: Mapping[str, Any],
        title: str = "",
        fields: Mapping[str, Any] | None = None,
        markdown: bool = False,
    ) -> None:
        self.path, self.command = getattr(args, "json", None), getattr(args, "command", None)
        self.commit = git_commit()
        self.env, self.fields, self.rows = dict(env), dict(fields or {}), []
        self.summary: dict[str, Any] = {}
        self.table = Table(columns, markdown)
        head = f"# {env['device']} | torch {env['torch']} triton {env.get('triton')}"
        print(head + (f" | {title}" if title else ""), flush=True)
        print(self.table.header(), flush=True)

    def payload(self) -> dict[str, Any]:
        head = {"environment": self.env, "commit": self.commit, "command": self.command}
        head.update(self.fields)
        return {**head, "results": self.rows, **self.summary}

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        print(self.table.line(row), flush=True)
        if self.path:
            write_json(self.path, self.payload())

    def finish(self, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self.summary.update(summary or {})
        for line in summary_lines(self.summary):
            print(line)
        if self.path:
            write_json(self.path, self.payload())
            print(f"wrote {self.path}")
        return self.payload()


def sweep(points: Iterable[Point], time_budget_s: float | None = None) -> Iterator[dict[str, Any]]:
    """Rows of the points in order: labels + measure(), or labels + "error" (the exception, or
    "skipped: time budget" for a point reached more than `time_budget_s` after the start)."""
    start = time.perf_counter()
    for labels, measure in points:
        row = dict(labels)
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            row["error"] = "skipped: time budget"
        else:
            try:
                row.update(measure())
            except Exception as exc:  # a peer the installed torch lacks, or one that fails
                row["error"] = error_text(exc)
        yield row


def run(
    args: argparse.Namespace,
    points: Iterable[Point],
    columns: Sequence[Column],
    *,
    title: str = "",
    env: Mapping[str, Any] | None = None,
    fields: Mapping[str, Any] | None = None,
    summarize: Callable[[list[dict[str, Any]]], Mapping[str, Any]] | None = None,
    markdown: bool = False,
) -> dict[str, Any]:
    """Measure `points` (see sweep) within args.time_budget, print them as a table under
    `title`, then `summarize(rows)`'s fields; keep args.json current. Returns the JSON payload.
    `env` defaults to environment(args.device); `fields` are the run's settings (dtype, shapes)."""
    if env is None:
        env = environment(getattr(args, "device", None))
    report = Report(args, columns, env=env, title=title, fields=fields, markdown=markdown)
    for row in sweep(points, getattr(args, "time_budget", None)):
        report.add(row)
    return report.finish(summarize(report.rows) if summarize else None)
