"""pytest integration of the micro-benchmarks (the scripts' harness is harness.py).

`mixfast bench` (or `pytest benchmarks/`, or `pytest benchmarks/bench_<op>.py`) runs the
pytest-benchmark functions of every bench_*.py here; every JSON that pytest-benchmark writes
(`--benchmark-json=...`) carries `machine_info["mixfast"]` = harness.environment(), and beside
pytest-benchmark's own `commit_info` (the git checkout of the working directory: `id`, `dirty`,
`branch`, ...) `commit_info["mixfast_commit"]`, the commit of the checkout whose mixfast ran
(None for an installed copy; mixfast.provenance), which is what a result from another working
directory must name. studies/ and results/ are not collected: their scripts are run by hand and
import-tested by tests/test_studies.py.
Fixtures: `bench_device` ("cuda" when a GPU is present, else "cpu") and `synced` (wraps a function
so each call waits for the GPU, so timings are of the work and not of the launch).
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatch
from typing import Any

import pytest
from harness import default_device, environment, git_commit, synchronize

collect_ignore = ["studies", "results"]


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py when pytest's own `python_files` patterns do not (a plain
    `pytest benchmarks/`); `mixfast bench` names them in python_files, so they are pytest's."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):  # named on the command line: pytest collects it
        return None
    if any(fnmatch(file_path.name, pattern) for pattern in parent.config.getini("python_files")):
        return None  # pytest's python plugin collects it; a second Module would run it twice
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["mixfast"] = environment()


def pytest_benchmark_update_commit_info(config, commit_info):
    commit_info["mixfast_commit"] = git_commit()


@pytest.fixture
def bench_device() -> str:
    return default_device()


@pytest.fixture
def synced(bench_device) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            synchronize(bench_device)
            return out

        return call

    return wrap
