"""Runs that survive: periodic checkpoints (`save_every`) resume bit for bit, `resume="auto"`
serves a fresh start and every restart with one command line, and under `torchrun
--max-restarts` a worker SIGKILLed mid-epoch costs only the steps since the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import tiny_data, tiny_model
from test_ddp import free_port

from mixfast import cli
from mixfast.checkpoint import load_checkpoint
from mixfast.train import MixTrainer, TrainConfig
from mixfast.train.step_runner import StepRunner

WORKER = Path(__file__).with_name("_elastic_worker.py")


class Crash(RuntimeError):
    """A failure mid-step: no checkpoint is written on the way out."""


def config(out: Path, **overrides) -> TrainConfig:
    base = dict(
        ssl_epochs=2, sl_epochs=2, mix_ratio=0.5, batch_size=16, blr=5e-3, ssl_blr=5e-3,
        warmup_epochs=0.5, out=str(out), progress=False, device="cpu", compile=False,
        log_every=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def fit(cfg: TrainConfig) -> MixTrainer:
    trainer = MixTrainer(tiny_model(), cfg)
    trainer.fit(None, tiny_data(64), tiny_data(16))
    return trainer


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "last.pt")["model"]


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def epochs_of(out: Path) -> list[int]:
    rows = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(row)["epoch"] for row in rows]


def test_a_crash_resumes_from_the_periodic_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    whole = fit(config(tmp_path / "whole"))
    run_step, calls = StepRunner.step, []

    def crashing_step(self, *args):  # 4 steps an epoch: step 7 is mid-epoch 2 (mix)
        calls.append(1)
        if len(calls) == 7:
            raise Crash("lost the worker")
        return run_step(self, *args)

    monkeypatch.setattr(StepRunner, "step", crashing_step)
    with pytest.raises(Crash):
        fit(config(tmp_path / "run", save_every=3, resume="auto"))
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["position"]
    assert (saved["global_step"], saved["epoch"], saved["step_in_epoch"]) == (6, 1, 2)
    monkeypatch.setattr(StepRunner, "step", run_step)
    resumed = fit(config(tmp_path / "run", save_every=3, resume="auto"))
    assert resumed.position.finished and whole.position.global_step == 12
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(tmp_path / "whole"))
    assert epochs_of(tmp_path / "run") == [1, 2, 3]


def test_resume_auto_starts_when_there_is_nothing_to_resume(tmp_path):
    out = tmp_path / "run"
    first = fit(config(out, resume="auto", stop_after=5))
    assert not first.folder.resume and first.position.global_step == 5
    again = fit(config(out, resume="auto"))
    assert again.folder.resume and again.position.finished
    finished = fit(config(out, resume="auto"))  # a finished run: nothing left to train
    assert finished.position.global_step == 12


TINY = (
    "--dataset synthetic --img-size 16 --train-limit 80 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --ssl-epochs 1 "
    "--sl-epochs 1 --batch-size 16 --device cpu --no-compile --no-progress"
).split()


def test_cli_resume_auto_and_save_every(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", *TINY, "--out", out, "--resume", "auto", "--stop-after", "1"]) == 0
    assert cli.main(["train", *TINY, "--out", out, "--resume", "auto", "--save-every", "2"]) == 0
    assert (tmp_path / "run" / "result.json").is_file()
    with pytest.raises(SystemExit) as refused:  # argparse's exit
        cli.main(["train", *TINY, "--out", out, "--resume", "later"])
    assert refused.value.code == 2
    assert "--resume takes no value or 'auto'" in capsys.readouterr().err


def torchrun(out: Path, kill_at: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--max-restarts", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", str(free_port()), str(WORKER), str(out), str(kill_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a timeout takes the workers down with torchrun
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.mark.slow
def test_a_worker_killed_under_torchrun_restarts_and_ends_bit_for_bit(tmp_path):
    whole = torchrun(tmp_path / "whole", kill_at=0)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = torchrun(tmp_path / "killed", kill_at=7)  # mid-epoch 2; checkpoint at step 6
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "SIGKILL" in killed.stderr or "Signals.SIGKILL" in killed.stderr or "-9" in killed.stderr
    assert_same_weights(final_weights(tmp_path / "killed"), final_weights(tmp_path / "whole"))
    assert epochs_of(tmp_path / "killed") == [1, 2, 3]
