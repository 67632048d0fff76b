"""Where a result came from: the git commit of the code that made it, and the command line.

Standard library only (layer 0), so a benchmark script, a study or a run folder can stamp its
JSON without importing torch. Nothing here raises: a result is still written when git is missing,
slow or the code is not a checkout (the commit is then None).

    git_commit(path=None) -> "3f2c…" | "3f2c…-dirty" | None
    provenance()          -> {"commit": git_commit(), "command": "mixfast compare --seeds 0 1"}
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

GIT_TIMEOUT_S = 5.0
# Variables that point git at another repository than the one holding `path` (set by git hooks).
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR")
_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: Sequence[str], cwd: Path) -> str | None:
    """git's stdout (stripped), or None when git is missing, fails or times out."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # `git status` must not take the index lock of a live tree
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit checked out where `path` (a file or folder) lies, "-dirty" appended when
    tracked files differ from it; None outside a git checkout, without git, or on any error.

    Default: the checkout holding this mixfast package, and only when the package is that
    checkout's own mixfast/ (an installed copy inside some other repository, say a virtual
    environment under a project's folder, is not that project's commit)."""
    try:
        where = Path(path).resolve() if path is not None else _PACKAGE_DIR
        if not where.is_dir():
            where = where.parent
        if not where.is_dir():
            return None
        out = _git(["rev-parse", "--show-toplevel", "HEAD"], where)
        if out is None or len(out.splitlines()) != 2:
            return None
        top, commit = out.splitlines()
        if path is None and Path(top).resolve() / "mixfast" != _PACKAGE_DIR:
            return None
        status = _git(["status", "--porcelain", "--untracked-files=no"], where)
        return commit + "-dirty" if status else commit
    except Exception:  # provenance must never cost the result it describes
        return None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line (default sys.argv), shell-quoted, the program as its basename; a module
    run with -m (argv[0] .../<package>/__main__.py) reads `python -m <package>`."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0])
    if program.name == "__main__.py" and program.parent.name:
        head = ["python", "-m", program.parent.name]
    elif argv[0] in ("", "-c"):
        head = ["python", "-c"]
    else:
        head = [program.name]
    return shlex.join([*head, *argv[1:]])


def provenance(
    path: str | os.PathLike | None = None, argv: Sequence[str] | None = None
) -> dict[str, str | None]:
    """{"commit": git_commit(path), "command": command_line(argv)}: what a result JSON records."""
    return {"commit": git_commit(path), "command": command_line(argv)}
