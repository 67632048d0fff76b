"""The fault tests' worker (tests/test_faults.py): `python tests/_fault_worker.py`.

It imports mixfast once, says `ready`, then runs the jobs the test writes on its stdin, one JSON
line each: {"argv": the `mixfast train` arguments, "fault": null or a fault, "log": a file}.
Each job runs `mixfast.cli.main(argv)` in a child forked for it (a process of its own, so a
SIGKILL or a signal ends that run and nothing else; forking skips the seconds of imports a new
interpreter would spend). The child's stdout and stderr go to the job's log. On stdout the
worker reports, one line each:

    ready                 the imports are done
    started PID           the job's child runs
    reached PID STEP      (fault "signal") the child finished optimizer step STEP and waits
    exited PID CODE       the child ended: its exit code, or -N when signal N killed it

Faults (a child installs its own before the run; mixfast's code is not changed):

    {"kind": "kill", "step": N}      SIGKILL itself right after optimizer step N (global count)
    {"kind": "signal", "step": N}    after step N report `reached`, then wait (at most
                                     WAIT_S seconds) until the run's SIGINT / SIGTERM handler
                                     has caught the signal the test sends, and go on
    {"kind": "rename", "write": K}   the K-th write of last.pt: SIGKILL between the whole,
                                     fsynced temporary and os.replace (mixfast.checkpoint's os)
    {"kind": "torn", "write": K}     the K-th write of last.pt: half of its bytes written and
                                     fsynced to the temporary, then SIGKILL (torch.save as
                                     mixfast.checkpoint calls it)
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import mixfast.checkpoint
import mixfast.cli
import mixfast.train.step_runner
import mixfast.train.stopping

WAIT_S = 60.0  # a signal test that never signals ends here instead of hanging
NO_SIGNAL = 97  # the child's exit code then
TORCH_DEFAULT_SEED = 67280421310721  # torch's generator in a new process


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def hook_steps(fault: dict, report) -> None:
    """Wrap StepRunner.step: after global step fault["step"], kill or wait for a signal."""
    runner_cls = mixfast.train.step_runner.StepRunner
    step = runner_cls.step
    stops: list = []
    if fault["kind"] == "signal":
        requests_cls = mixfast.train.stopping.StopRequests
        init = requests_cls.__init__

        def remembered_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            stops.append(self)

        requests_cls.__init__ = remembered_init

    def faulty_step(self, phase, stage_step):
        number = self.position.global_step + 1  # the trainer counts it once the step returns
        step(self, phase, stage_step)
        if number != fault["step"]:
            return
        if fault["kind"] == "kill":
            print(f"fault: SIGKILL after step {number} ({phase})", file=sys.stderr)
            die()
        report(f"reached {os.getpid()} {number}")
        deadline = time.monotonic() + WAIT_S
        while not any(s.signal is not None for s in stops):
            if time.monotonic() > deadline:
                print(f"fault: no signal within {WAIT_S} s after step {number}", file=sys.stderr)
                sys.stderr.flush()
                os._exit(NO_SIGNAL)
            time.sleep(0.01)  # the handler runs in this thread, between two sleeps

    runner_cls.step = faulty_step


class _Namespace:
    """A module as mixfast.checkpoint sees it, one function replaced."""

    def __init__(self, module, **replaced) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._module, name)


def hook_checkpoint_writes(fault: dict) -> None:
    """Kill the K-th write of last.pt: before its rename, or halfway through its bytes."""
    writes = {"n": 0}
    if fault["kind"] == "rename":

        def replace(src, dst, **kwargs):
            if Path(dst).name == "last.pt":
                writes["n"] += 1
                if writes["n"] == fault["write"]:
                    print(f"fault: SIGKILL before renaming {src} to {dst}", file=sys.stderr)
                    die()
            return os.replace(src, dst, **kwargs)

        mixfast.checkpoint.os = _Namespace(os, replace=replace)
    else:
        save = torch.save

        def torn_save(obj, handle, *args, **kwargs):
            if not (isinstance(obj, dict) and obj.get("format") == mixfast.checkpoint.FORMAT):
                return save(obj, handle, *args, **kwargs)
            writes["n"] += 1
            if writes["n"] != fault["write"]:
                return save(obj, handle, *args, **kwargs)
            whole = io.BytesIO()
            save(obj, whole, *args, **kwargs)
            data = whole.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            print(f"fault: SIGKILL after {len(data) // 2} of {len(data)} bytes", file=sys.stderr)
            die()

        mixfast.checkpoint.torch = _Namespace(torch, save=torn_save)


def run_child(job: dict, report_fd: int) -> int:
    """The job in this (forked) process: output to its log, fresh RNGs, its fault, the CLI."""
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    report = os.fdopen(report_fd, "w", buffering=1)

    def say(line: str) -> None:
        report.write(line + "\n")
        report.flush()

    # as a new interpreter would start: never share the worker's RNG states (that would hide
    # a run that depends on unseeded Python or numpy randomness)
    random.seed()
    np.random.seed()
    torch.manual_seed(TORCH_DEFAULT_SEED)
    torch.set_num_threads(1)
    fault = job.get("fault")
    if fault and fault["kind"] in ("kill", "signal"):
        hook_steps(fault, say)
    elif fault:
        hook_checkpoint_writes(fault)
    try:
        code = mixfast.cli.main(job["argv"])
    except SystemExit as exc:  # SIGTERM: the trainer's 128 + 15
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> None:
    torch.set_num_threads(1)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        report_fd = os.dup(out.fileno())
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_child(job, report_fd)
            except BaseException:  # noqa: BLE001 - the child must never return into this loop
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(report_fd)
        out.write(f"started {pid}\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(f"exited {pid} {os.waitstatus_to_exitcode(status)}\n")
        out.flush()


if __name__ == "__main__":
    main()
