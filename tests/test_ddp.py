"""DDP on CPU: 2 processes (torchrun, gloo) train exactly as 1 process with the same global
batch (here 2 x 8 per rank against 8 x 2 accumulation steps, the same masks per sample)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_worker import config
from _tiny import tiny_data, tiny_model

from mixfast.checkpoint import load_checkpoint
from mixfast.train import train

WORKER = Path(__file__).with_name("_ddp_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    single = tiny_model(drop_path=0.0)
    expected = train(
        config(None, batch_size=8, accum_steps=2),
        single,
        None,
        tiny_data(64, seed=1),
        tiny_data(20, seed=2),
    )
    saved = json.loads((out / "result.json").read_text())
    assert saved["global_step"] == expected.global_step == 12  # 64 / 16 x 3 epochs
    assert saved["sample_passes"] == expected.sample_passes
    assert saved["top1"] == pytest.approx(expected.top1)  # validation split across ranks
    losses = [row["loss"] for row in saved["epochs"]]
    assert losses == pytest.approx([row["loss"] for row in expected.epochs], rel=1e-5)
    state = load_checkpoint(out / "last.pt")["model"]
    for key, value in single.state_dict().items():
        torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == [  # + pictures
        ".lock",
        ".mixfast-run",
        "config.json",
        "last.pt",
        "metrics.jsonl",
        "result.json",
    ]


@pytest.mark.slow
def test_only_rank_zero_prints_the_summary(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = "--dataset synthetic --img-size 16 --train-limit 80 --test-limit 20 --depth 1 "
    tiny += "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --pipeline sl "
    tiny += "--sl-epochs 1 --batch-size 8 --device cpu --no-compile --no-progress"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command += ["-m", "mixfast", "train", *tiny.split(), "--out", str(out)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("test top-1") == 1
    assert proc.stderr.count("mixfast train: sl on synthetic") == 1
    assert (out / "data.json").is_file()
