"""`mixfast bench`: pytest-benchmark over the benchmarks shipped with the package."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mixfast.cli.args import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run the benchmarks", description="Run pytest-benchmark.")
    parser.add_argument("--path", default=None, help="benchmarks directory")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    parser.set_defaults(handler=cmd_bench)


def benchmark_dirs() -> list[Path]:
    """./benchmarks, the source tree's (editable install) and the installed package's."""
    package = Path(__file__).resolve().parents[1]
    return [Path.cwd() / "benchmarks", package.parent / "benchmarks", package / "benchmarks"]


def cmd_bench(args: argparse.Namespace) -> Callable[[], int]:
    if args.path:
        candidates = [Path(args.path)]
        path = candidates[0] if candidates[0].is_dir() else None
    else:  # a benchmarks folder is one with the harness's conftest.py
        candidates = benchmark_dirs()
        path = next((p for p in candidates if (p / "conftest.py").is_file()), None)
    if path is None:
        raise UsageError(
            f"no benchmarks directory at {', '.join(map(str, candidates))}; pass --path DIR"
        )
    extra = [a for a in args.pytest_args if a != "--"]
    command = [sys.executable, "-m", "pytest", str(path), "--benchmark-only", "-q"]
    command += ["-o", "python_files=bench_*.py test_*.py", *extra]

    def work() -> int:
        print("mixfast bench:", " ".join(command), file=sys.stderr)
        return 0 if subprocess.run(command).returncode == 0 else 1

    return work
