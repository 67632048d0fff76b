"""mixfast.provenance: the commit of a git checkout ("-dirty" with uncommitted changes to tracked
files), None outside one or without git, and the command line; it never raises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixfast import provenance
from mixfast.provenance import command_line, git_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


GIT_IDENTITY = (
    "-c",
    "user.name=t",
    "-c",
    "user.email=t@example.invalid",
    "-c",
    "commit.gpgsign=false",
)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "b.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


@needs_git
def test_commit_of_a_clean_checkout(repo: Path):
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert git_commit(repo) == head
    assert git_commit(repo / "sub") == head  # a folder inside it
    assert git_commit(repo / "sub" / "b.py") == head  # a file inside it
    (repo / "untracked.txt").write_text("not part of the commit's tree\n")
    assert git_commit(str(repo)) == head  # untracked files do not make it dirty


@needs_git
def test_uncommitted_changes_mark_it_dirty(repo: Path):
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "a.txt").write_text("two\n")
    assert git_commit(repo) == head + "-dirty"
    _git(repo, "commit", "-q", "-am", "second")
    assert git_commit(repo) == _git(repo, "rev-parse", "HEAD") != head


@needs_git
def test_outside_a_checkout_is_none(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) is None
    assert git_commit(plain / "missing" / "file.json") is None
    _git(plain, "init", "-q")
    assert git_commit(plain) is None  # a repository without a commit yet


@needs_git
def test_without_git_is_none(repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    assert git_commit(repo) is None
    assert provenance.provenance(repo)["commit"] is None


def test_git_failures_never_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def boom(*args, **kwargs):
        raise subprocess.TimeoutExpired(cmd="git", timeout=provenance.GIT_TIMEOUT_S)

    monkeypatch.setattr(provenance.subprocess, "run", boom)
    assert git_commit(tmp_path) is None
    assert git_commit() is None


@needs_git
def test_default_is_the_checkout_holding_mixfast():
    package = Path(provenance.__file__).resolve().parent
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=package, capture_output=True, text=True
    )
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() / "mixfast" != package:
        assert git_commit() is None  # an installed copy: no commit of someone else's repository
    else:
        assert git_commit() == git_commit(package.parent)
        assert git_commit().removesuffix("-dirty") == _git(package, "rev-parse", "HEAD")


def test_command_line():
    assert command_line(["/usr/bin/mixfast", "compare", "--seeds", "0", "1"]) == (
        "mixfast compare --seeds 0 1"
    )
    assert command_line(["/x/mixfast/__main__.py", "train", "--out", "a b"]) == (
        "python -m mixfast train --out 'a b'"
    )
    assert command_line(["benchmarks/bench_masking.py", "--json", "o.json"]) == (
        "bench_masking.py --json o.json"
    )
    assert command_line([]) == ""
    assert command_line() == command_line(sys.argv)


@needs_git
def test_provenance_record(repo: Path):
    record = provenance.provenance(repo, ["/bin/tool", "--flag"])
    assert set(record) == {"commit", "command"}
    assert record["command"] == "tool --flag"
    assert record["commit"] == _git(repo, "rev-parse", "HEAD")
