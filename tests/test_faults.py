"""Runs killed and resumed: the final weights equal an uninterrupted run's, bit for bit.

The reference is `python -m mixfast train` run once without a fault. Every faulty run is the
same command in a process of its own (tests/_fault_worker.py forks one per run), killed by
SIGKILL mid-epoch, by SIGKILL during a write of last.pt (before its rename, or halfway through
its bytes), or stopped by SIGTERM / SIGINT mid-epoch; then restarted (`--resume` when last.pt
exists, else anew) until it finishes. The plan: SSL, MIX and SL epochs of STEPS steps each, a
check every step (--log-every 1), on-device augmentation (its RNG must be restored too).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from mixfast.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_fault_worker.py")
RUN = (
    "train --dataset synthetic --img-size 16 --train-limit 96 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --pipeline mix "
    "--ssl-epochs 2 --sl-epochs 2 --mix-ratio 0.5 --batch-size 16 --blr 0.05 --ssl-blr 0.05 "
    "--warmup-epochs 0.5 --augment --device cpu --no-compile --no-progress --log-every 1"
).split()
STEPS = 5  # per epoch: 80 labeled images / 16
PHASES = ("ssl", "mix", "sl")  # epochs 1, 2, 3: global steps 1-5, 6-10, 11-15
START_S = 240  # the worker's imports (a loaded 2-core machine)
RUN_S = 180  # one run

_rng = random.Random(29)
# a step inside each epoch (never its last): SIGKILL there, in a chain of three kills
KILL_STEPS = [epoch * STEPS + _rng.randint(1, STEPS - 1) for epoch in range(len(PHASES))]
SIGNAL_STEPS = {  # a signal mid-epoch: SIGTERM in MIX, SIGINT in SL
    signal.SIGTERM: STEPS + _rng.randint(1, STEPS - 1),
    signal.SIGINT: 2 * STEPS + _rng.randint(1, STEPS - 1),
}


def environment(hash_seed: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(hash_seed)}


@dataclass
class Run:
    code: int  # exit code, or -N when signal N killed the run
    log: str  # its stdout and stderr


class FaultWorker:
    """tests/_fault_worker.py: one job at a time, each in a process of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stderr = open(folder / "worker.stderr", "w")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=ROOT,
            env=environment(2),  # another hash seed than the reference's process
        )
        self.lines: queue.Queue[list[str] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = False
        self.jobs = 0

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.split())
        self.lines.put(None)

    def expect(self, words: tuple[str, ...], timeout: float, log: Path | None = None) -> list:
        """The next report among `words` ([word, *values]); fails on a timeout or an end."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                item = ["timeout"]
            if item is None or item[0] in ("timeout", "exited") and item[0] not in words:
                self.proc.poll()
                text = log.read_text() if log is not None and log.exists() else ""
                errors = (self.folder / "worker.stderr").read_text()[-3000:]
                pytest.fail(f"worker: {item} waiting for {words}\n{text[-3000:]}\n{errors}")
            if item[0] in words:
                return item

    def run(
        self, out: Path, extra: list[str], fault: dict | None = None, send: int | None = None
    ) -> Run:
        """`mixfast train RUN --out OUT EXTRA` with `fault`; with `send`, that signal is sent
        once the run reports it reached the fault's step (fault kind "signal")."""
        if not self.ready:
            self.expect(("ready",), START_S)
            self.ready = True
        self.jobs += 1
        log = out.parent / f"{out.name}-{self.jobs}.log"
        job = {"argv": [*RUN, "--out", str(out), *extra], "fault": fault, "log": str(log)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = None
        deadline = time.monotonic() + RUN_S
        try:
            while True:
                item = self.expect(("started", "reached", "exited"), RUN_S, log)
                if item[0] == "started":
                    pid = int(item[1])
                elif item[0] == "reached":
                    assert send is not None and int(item[2]) == fault["step"], item
                    os.kill(int(item[1]), send)
                else:
                    return Run(int(item[2]), log.read_text())
                if time.monotonic() > deadline:
                    pytest.fail(f"run {job} did not end within {RUN_S} s")
        except BaseException:
            if pid is not None:  # never leave a run behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    fault_worker = FaultWorker(tmp_path_factory.mktemp("worker"))
    yield fault_worker
    fault_worker.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, worker) -> Path:
    """The uninterrupted run, by `python -m mixfast train` (while the worker imports)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mixfast", *RUN, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=START_S + RUN_S,
        cwd=ROOT,
        env=environment(1),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert metrics_epochs(out) == [1, 2, 3]
    return out


def metrics_rows(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metrics_epochs(out: Path) -> list[int]:
    return [row["epoch"] for row in metrics_rows(out)]


def restart(worker: FaultWorker, out: Path, fault: dict | None = None, **kwargs) -> Run:
    """The run again: --resume when it left a checkpoint, else from the start."""
    extra = ["--resume"] if (out / "last.pt").exists() else []
    return worker.run(out, extra, fault, **kwargs)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint values differ (tensors bit for bit: torch.equal)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b):
            return []
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"]
        diff = (a.double() - b.double()).abs()
        count = int((diff > 0).sum()) if a.is_floating_point() else int((a != b).sum())
        return [f"{where}: {count}/{a.numel()} values differ, max |diff| {diff.max().item():.3g}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(set(a) ^ set(b), key=str)} in one only"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}[{key!r}]")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


ROW_KEYS = ("phase", "epoch", "steps", "global_step", "loss", "loss_ssl", "loss_sl", "alpha")
ROW_KEYS += ("lr", "val_top1", "val_top1_tasks")


def assert_matches_reference(out: Path, reference: Path) -> None:
    """Finished, each epoch's metrics row once, and the reference's final weights (and AdamW
    state, position, losses, top-1) bit for bit."""
    assert not list(out.glob(".*.tmp")), "a temporary was left behind"
    assert (out / "result.json").is_file()
    assert metrics_epochs(out) == [1, 2, 3]  # each epoch exactly once
    got, expected = load_checkpoint(out / "last.pt"), load_checkpoint(reference / "last.pt")
    assert got["position"]["finished"] and got["position"] == expected["position"]
    assert got["model"].keys() == expected["model"].keys()
    differ = differences(got["model"], expected["model"], "model")
    assert not differ, "final weights differ from the reference:\n" + "\n".join(differ)
    differ = differences(got["optimizer"], expected["optimizer"], "optimizer")
    assert not differ, "AdamW state differs from the reference:\n" + "\n".join(differ)
    rows = [{k: row.get(k) for k in ROW_KEYS} for row in metrics_rows(out)]
    assert rows == [{k: row.get(k) for k in ROW_KEYS} for row in metrics_rows(reference)]
    result, full = (json.loads((p / "result.json").read_text()) for p in (out, reference))
    assert (result["top1"], result["test_top1"]) == (full["top1"], full["test_top1"])


def assert_position(out: Path, epoch: int, step_in_epoch: int) -> dict[str, Any]:
    state = load_checkpoint(out / "last.pt")
    position = state["position"]
    assert (position["epoch"], position["step_in_epoch"]) == (epoch, step_in_epoch), position
    assert position["global_step"] == epoch * STEPS + step_in_epoch
    return state


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_epoch_in_each_phase_then_resume_is_bit_identical(tmp_path, worker, reference):
    """SIGKILL at a step inside the SSL, then the MIX, then the SL epoch (KILL_STEPS), each
    restart running into the next kill: the steps since the last epoch end are lost and
    redone, and the run ends as the uninterrupted one."""
    out = tmp_path / "run"
    for step in KILL_STEPS:
        assert step % STEPS, "a kill inside an epoch, never at its end"
        run = restart(worker, out, {"kind": "kill", "step": step})
        assert run.code == -signal.SIGKILL, run.log[-3000:]
        assert f"fault: SIGKILL after step {step} " in run.log
        done = (step - 1) // STEPS  # epochs finished before the kill
        if done:
            assert_position(out, done, 0)  # the last epoch end's checkpoint
        else:
            assert not (out / "last.pt").exists()
        assert metrics_epochs(out) == list(range(1, done + 1))
    run = restart(worker, out)
    assert run.code == 0, run.log[-3000:]
    assert_matches_reference(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rename", "torn"])
@pytest.mark.parametrize("write", [1, 2, 4])
def test_sigkill_during_a_checkpoint_write_then_resume_is_bit_identical(
    tmp_path, worker, reference, kind, write
):
    """SIGKILL in the `write`-th write of last.pt (1, 2: the ends of epochs 1 and 2; 4: the
    final save after epoch 3's): between the whole temporary and its rename, or halfway
    through its bytes. The folder keeps the previous whole checkpoint (none before the first)
    and the temporary; the next start removes the temporary and the run ends as the
    uninterrupted one."""
    out = tmp_path / "run"
    run = worker.run(out, [], {"kind": kind, "write": write})
    assert run.code == -signal.SIGKILL, run.log[-3000:]
    assert "fault: SIGKILL" in run.log
    temporaries = list(out.glob(".last.pt.*.tmp"))
    assert len(temporaries) == 1, sorted(p.name for p in out.iterdir())
    if kind == "rename":  # the temporary is whole: the kill came between write and rename
        position = load_checkpoint(temporaries[0])["position"]
        assert (position["epoch"], position["finished"]) == (min(write, 3), write == 4)
    else:
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(temporaries[0])
    if write == 1:
        assert not (out / "last.pt").exists()
    else:
        state = assert_position(out, write - 1, 0)  # the previous checkpoint, whole
        assert not state["position"]["finished"]
    run = restart(worker, out)
    assert run.code == 0, run.log[-3000:]
    assert not temporaries[0].exists()
    assert_matches_reference(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_saves_then_resume_is_bit_identical(tmp_path, worker, reference, signum):
    """SIGTERM (inside MIX) or SIGINT (inside SL), sent by the test once the run finished step
    SIGNAL_STEPS[signum] and waits: the step in flight ends, last.pt is saved there, mid-epoch
    (with the epoch's running sums), the process exits (SIGTERM: 128 + 15; SIGINT: the CLI's
    `interrupted`, 130), and the resumed run ends as the uninterrupted one."""
    out = tmp_path / "run"
    step = SIGNAL_STEPS[signum]
    assert step % STEPS, "a signal inside an epoch, never at its end"
    run = worker.run(out, [], {"kind": "signal", "step": step}, send=signum)
    if signum == signal.SIGTERM:
        assert run.code == 128 + signal.SIGTERM, run.log[-3000:]
    else:
        assert run.code == 130 and "mixfast train: interrupted" in run.log, run.log[-3000:]
    assert f"mixfast: stopped at step {step}, checkpoint saved" in run.log
    state = assert_position(out, (step - 1) // STEPS, step % STEPS)
    assert state["epoch_state"] is not None and not state["position"]["finished"]
    assert not (out / "result.json").exists()
    run = restart(worker, out)
    assert run.code == 0, run.log[-3000:]
    assert_matches_reference(out, reference)
