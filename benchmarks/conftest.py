"""Shared helpers of the micro-benchmarks, for pytest-benchmark runs and for script runs.

pytest: `pytest benchmarks/bench_<op>.py` (bench_*.py files are collected here); every JSON that
pytest-benchmark writes (`--benchmark-json=...`) carries `machine_info["mixfast"]` = environment().
Fixtures: `bench_device` ("cuda" when a GPU is present, else "cpu") and `synced` (wraps a function
so each call waits for the GPU, so timings are of the work and not of the launch).

Scripts: `from conftest import environment, time_ms, write_json` (a script's own folder is on
sys.path), then `write_json(path, rows)` writes {"environment": ..., "results": rows}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch


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


def environment(device: str | torch.device | None = None) -> dict[str, Any]:
    """Device name and versions: what any published figure must name."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
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
    return info


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(
    fn: Callable[[], Any], device: str | torch.device, warmup: int = 5, reps: int = 50
) -> dict[str, float]:
    """Median and min milliseconds per fn() call. CPU: each call timed and waited for. CUDA: 10
    rounds of `reps` back-to-back calls between CUDA events (launch overhead overlaps, as in a
    training step), per call."""
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
    triton's do_bench (CUDA events); CPU: each call timed, for `budget_ms` or `max_samples`."""
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


def write_json(path: str, results: list[dict[str, Any]], device: str | None = None) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {"environment": environment(device), "results": results}, f, indent=1, default=str
        )


# ----------------------------------------------------------------------------------------------
# pytest integration
# ----------------------------------------------------------------------------------------------


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["mixfast"] = environment()


@pytest.fixture
def bench_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def synced(bench_device) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            synchronize(bench_device)
            return out

        return call

    return wrap
