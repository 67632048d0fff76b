"""--fsdp (FSDP2 on CPU, gloo): 2 processes train as DDP does, the packed mix step all-gathers
each block around its packed forward, and sharded checkpoints resume with 2 processes bit for
bit and with 1 (accum_steps 2) within floating-point tolerance."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _ddp_worker import config
from _fsdp_worker import STOP
from _tiny import TINY_KWARGS, tiny_data, tiny_model
from test_ddp import free_port
from test_elastic import TINY

from mixfast import cli, create_model
from mixfast.checkpoint import export_encoder, load_checkpoint
from mixfast.checks import SettingError
from mixfast.ops import random_masking
from mixfast.optim import make_adamw, set_lr
from mixfast.train import sharded_checkpoint, train
from mixfast.train.sharded_checkpoint import consolidate
from mixfast.train.sharding import shard_model

WORKER = Path(__file__).with_name("_fsdp_worker.py")
DATA = (tiny_data(64, seed=1), tiny_data(20, seed=2))  # the worker's


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The worker's runs under 2 torchrun processes (see tests/_fsdp_worker.py)."""
    out = tmp_path_factory.mktemp("fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command += [str(WORKER), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) + proc.stderr[-3000:]
    return out


def losses(out: Path) -> list[float]:
    return [row["loss"] for row in json.loads((out / "result.json").read_text())["epochs"]]


def weights(run: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """The model state of a sharded run folder, made one file (consolidate)."""
    return load_checkpoint(consolidate(run, tmp / f"{run.name}.pt"))["model"]


@pytest.mark.slow
def test_fsdp_matches_ddp(runs, tmp_path):
    assert losses(runs / "fsdp") == pytest.approx(losses(runs / "ddp"), rel=1e-5)
    ddp = load_checkpoint(runs / "ddp" / "last.pt")["model"]
    fsdp = weights(runs / "fsdp", tmp_path)
    assert fsdp.keys() == ddp.keys()
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], atol=1e-5, rtol=1e-4, msg=key)
    saved = json.loads((runs / "fsdp" / "result.json").read_text())
    assert saved["resolved"]["world_size"] == 2 and saved["completed"]
    ddp_saved = json.loads((runs / "ddp" / "result.json").read_text())
    assert saved["step_flops"] == ddp_saved["step_flops"]  # the FLOP count sees whole weights
    assert len(list((runs / "fsdp").glob("last-*.dcp"))) == 1  # the one last.pt names
    assert not list((runs / "fsdp").glob(".*.tmp"))


@pytest.mark.slow
def test_pictures_one_rank_cannot_read_are_turned_off_on_every_rank(runs):
    """The run finishes (no rank waits in the collective forward) and draws no picture, while
    the same run with readable images draws them."""
    assert (runs / "fsdp" / "recon-last.png").is_file()
    assert (runs / "pictures-rank1" / "result.json").is_file()
    assert not list((runs / "pictures-rank1").glob("recon-*.png"))
    assert losses(runs / "pictures-rank1") == losses(runs / "fsdp")  # pictures touch no RNG


@pytest.mark.slow
def test_packed_forward_sees_whole_parameters_then_sharded(runs):
    for rank in (0, 1):
        record = json.loads((runs / f"packed-rank{rank}.json").read_text())
        whole = {"type": "Parameter", "shape": [96, 32], "local": [96, 32]}
        assert record["during"] == [whole, whole]  # 2 blocks, each all-gathered
        sharded = {"type": "DTensor", "shape": [96, 32], "local": [48, 32]}
        assert record["after"] == [sharded, sharded]


@pytest.mark.slow
def test_sharded_checkpoint_resumes_with_two_processes_bit_for_bit(runs, tmp_path):
    saved = load_checkpoint(runs / "stopped-copy" / "last.pt")
    assert saved["position"]["global_step"] == STOP and saved["model"] is None
    resumed, whole = weights(runs / "stopped", tmp_path), weights(runs / "fsdp", tmp_path)
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key
    assert losses(runs / "stopped") == losses(runs / "fsdp")
    from_ssl = weights(runs / "stopped-ssl", tmp_path)  # saved before the heads had state
    for key in whole:
        assert torch.equal(from_ssl[key], whole[key]), key


@pytest.mark.slow
def test_sharded_checkpoint_resumes_with_one_process_and_accumulation(runs, tmp_path):
    out = runs / "stopped-copy"
    cfg = dataclasses.replace(config(str(out), batch_size=8, accum_steps=2), fsdp=True, resume=True)
    result = train(
        cfg, tiny_model(drop_path=0.0), None, tiny_data(64, seed=1), tiny_data(20, seed=2)
    )
    assert result.global_step == 12 and result.resolved["world_size"] == 1
    assert losses(out)[2] == pytest.approx(losses(runs / "fsdp")[2], rel=1e-5)
    resumed, whole = weights(out, tmp_path), weights(runs / "fsdp", tmp_path)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_with_one_process_and_accumulation(runs):
    out = runs / "ddp-stopped"
    cfg = dataclasses.replace(config(str(out), batch_size=8, accum_steps=2), resume=True)
    result = train(cfg, tiny_model(drop_path=0.0), None, *DATA)
    assert result.global_step == 12 and result.resolved["world_size"] == 1
    resumed, whole = (load_checkpoint(r / "last.pt")["model"] for r in (out, runs / "ddp"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_another_effective_batch_is_refused_on_resume(runs):
    out = runs / "stopped-copy"  # 2 x 1 when saved, 1 x 2 once the test above resumed it
    before = (out / "last.pt").read_bytes()
    cfg = dataclasses.replace(config(str(out), batch_size=8, accum_steps=1), fsdp=True, resume=True)
    expected = r"made by \d process\(es\) x accum_steps \d .* processes x accum_steps = 2"
    with pytest.raises(SettingError, match=expected):
        train(cfg, tiny_model(drop_path=0.0), None, tiny_data(64, seed=1), tiny_data(20, seed=2))
    assert (out / "last.pt").read_bytes() == before


def test_cuda_graph_with_fsdp_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", *TINY, "--out", out, "--fsdp", "--cuda-graph"]) == 2
    assert "--cuda-graph does not compose with --fsdp" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_fsdp_composes_with_grad_checkpointing(runs, tmp_path):
    assert losses(runs / "fsdp-gc") == pytest.approx(losses(runs / "fsdp"), rel=1e-5)
    checkpointed, plain = weights(runs / "fsdp-gc", tmp_path), weights(runs / "fsdp", tmp_path)
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.fixture
def group_of_one():
    """A process group of one (gloo), as `--fsdp` makes outside torchrun."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("fused", [True, False])
def test_grouped_adamw_steps_sharded_parameters_as_whole_ones(group_of_one, fused):
    """GroupedAdamW (layer decay groups; fused kernel or multi-tensor path) on DTensors."""
    images, labels = tiny_data(8, seed=3).tensors
    masking = random_masking(8, 16, 0.75, seed=0, offset=0)
    models = [tiny_model(drop_path=0.0), tiny_model(drop_path=0.0)]
    shard_model(models[1], torch.device("cpu"), amp=False)
    for model in models:
        optimizer = make_adamw(
            model, weight_decay=0.05, layer_decay=0.75, betas=(0.9, 0.95), fused=fused
        )
        set_lr(optimizer, 1e-2)
        for _ in range(2):
            loss, _ = model.forward_mixed(images, images, labels, alpha=0.5, masking=masking)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    whole = models[0].state_dict()
    for key, value in models[1].state_dict().items():
        torch.testing.assert_close(value.full_tensor(), whole[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_fsdp_compiles_per_block(tmp_path):
    """compile=True under FSDP compiles each block (aot_eager here: no C++ build) and trains
    as the eager FSDP run does; one process (a group of one)."""
    results = []
    for compiled in (False, True):
        cfg = dataclasses.replace(
            config(str(tmp_path / f"run-{compiled}"), batch_size=16, accum_steps=1),
            fsdp=True,
            compile=compiled,
            compile_backend="aot_eager",
        )
        data = (tiny_data(64, seed=1), tiny_data(20, seed=2))
        results.append(train(cfg, tiny_model(drop_path=0.0), None, *data))
    eager, compiled = results
    assert compiled.resolved["compile"] and not eager.resolved["compile"]
    compiled_losses = [row["loss"] for row in compiled.epochs]
    assert compiled_losses == pytest.approx([row["loss"] for row in eager.epochs], rel=1e-4)


@pytest.mark.slow
def test_pretrained_path_reads_a_consolidated_sharded_checkpoint(runs, tmp_path):
    with pytest.raises(SettingError, match="a sharded .--fsdp. checkpoint.*consolidate"):
        tiny_model_from(runs / "fsdp" / "last.pt")
    single = consolidate(runs / "fsdp", tmp_path / "full.pt")
    model = tiny_model_from(single)
    for key, value in load_checkpoint(single)["model"].items():
        assert torch.equal(model.state_dict()[key], value), key
    export_encoder(model, tmp_path / "encoder.pt")  # a timm state_dict from it


def tiny_model_from(path: Path) -> torch.nn.Module:
    return create_model(  # keep: the API-built run model names no classes (head_labels)
        "vit_tiny_patch16_224", **TINY_KWARGS, pretrained_path=str(path), pretrained_head="keep"
    )


@pytest.mark.slow
def test_a_sharded_save_killed_before_its_rename_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    """One process (a group of one): the save at step 4 dies after writing its shards, before
    publishing them; last.pt still names step 2's whole folder, and the run resumes from it."""
    out = tmp_path / "run"
    cfg = dataclasses.replace(config(str(out), batch_size=16, accum_steps=1), fsdp=True)
    train(dataclasses.replace(cfg, stop_after=2), tiny_model(drop_path=0.0), None, *DATA)
    published = load_checkpoint(out / "last.pt")["shards"]

    def killed(folder):  # _fsync_folder runs between the shards' writing and their rename
        raise KeyboardInterrupt("killed between the shards and their rename")

    monkeypatch.setattr(sharded_checkpoint, "_fsync_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        train(
            dataclasses.replace(cfg, resume=True, stop_after=4),
            tiny_model(drop_path=0.0),
            None,
            *DATA,
        )
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["shards"] == published
    assert (out / published / ".metadata").is_file() and list(out.glob(".last-*.dcp.tmp"))
    result = train(dataclasses.replace(cfg, resume=True), tiny_model(drop_path=0.0), None, *DATA)
    assert result.global_step == 12 and result.completed
    assert not list(out.glob(".last-*.dcp.tmp")) and len(list(out.glob("last-*.dcp"))) == 1
