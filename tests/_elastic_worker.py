"""One rank of the elastic-restart test: `torchrun --max-restarts 2 --nproc_per_node 2
tests/_elastic_worker.py OUT KILL_AT`. Every attempt runs the same command line (`resume="auto"`,
`save_every=2`); on the first attempt rank 1 kills itself with SIGKILL as it starts step
KILL_AT (0: never), as a lost worker would, and torchrun restarts every worker."""

from __future__ import annotations

import os
import signal
import sys

import torch
from _ddp_worker import config
from _tiny import tiny_data, tiny_model

from mixfast.train import train
from mixfast.train.step_runner import StepRunner


def kill_at(step: int) -> None:
    """Rank 1 of the first attempt dies with SIGKILL at the start of optimizer step `step`."""
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if not step or not first_attempt or os.environ.get("RANK") != "1":
        return
    run_step = StepRunner.step
    done = 0

    def dying_step(self, *args):
        nonlocal done
        done += 1
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return run_step(self, *args)

    StepRunner.step = dying_step


def main(out: str, step: int) -> None:
    torch.set_num_threads(1)
    kill_at(step)
    run = config(out, batch_size=8, accum_steps=1)
    run = type(run)(**{**run.__dict__, "resume": "auto", "save_every": 2})
    train(run, tiny_model(drop_path=0.0), None, tiny_data(64, seed=1), tiny_data(20, seed=2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
