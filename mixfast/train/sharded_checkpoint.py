"""Sharded checkpoints of an `--fsdp` run through torch.distributed.checkpoint (DCP).

Layout in the run folder DIR (docs/checkpoints.md):

    DIR/last.pt            the main rank's file: the checkpoint of mixfast/checkpoint.py with
                           "model" and "optimizer" None and "shards" naming the folder below
    DIR/last-<hex>.dcp/    DCP's files: model and AdamW state by parameter name, each rank's
                           shards in its own file (__<rank>_0.distcp) plus .metadata

A save writes the shards into DIR/.last-<hex>.dcp.tmp/ (every rank its own), renames the
folder into place once every rank has finished, then writes DIR/last.pt atomically, then
removes the folder of the checkpoint before: last.pt only ever names a whole folder, so a
checkpoint is whole or absent (a kill in between leaves an unnamed folder, removed at the next
save). DCP reshards on load, so a checkpoint of W processes loads into any other number.

The model and optimizer state come from `torch.distributed.checkpoint.state_dict`
(`get_state_dict` / `set_state_dict`: parameter names as in the unsharded model, so the state
maps onto any sharding). A single file for timm or `--pretrained-path`: `consolidate`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from mixfast import checkpoint as ckpt

LAST = "last.pt"


def save_sharded(
    run: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, rest: dict[str, Any]
) -> None:
    """Every rank: its shards of `model` and `optimizer`; the main rank: `rest` (the other
    checkpoint keys) as DIR/last.pt naming them. Collective: all ranks call it together."""
    name = _shared_name()
    tmp = run / f".{name}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save(_states(model, optimizer), checkpoint_id=str(tmp))
    dist.barrier()  # every rank's files are written (DCP's .metadata too)
    if dist.get_rank() == 0:
        _fsync_folder(tmp)
        os.replace(tmp, run / name)
        _fsync_folder(run)
        ckpt.save_checkpoint({**rest, "model": None, "optimizer": None, "shards": name}, run / LAST)
        remove_stale_shards(run, keep=name)
    dist.barrier()  # nobody reads or writes the folder before it is consistent


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load DIR/last-<hex>.dcp into `model` and `optimizer` (sharded at any world size)."""
    if not folder.is_dir() or not (folder / ".metadata").is_file():
        raise ckpt.CheckpointError(f"{folder}: the sharded checkpoint that last.pt names is gone")
    states = _states(model, optimizer)
    if optimizer is not None:
        _keep_saved_optimizer_state(states["optimizer"], folder)
    dcp.load(states, checkpoint_id=str(folder))
    if optimizer is None:
        set_model_state_dict(model, states["model"])
    else:
        with _zero_lr(optimizer):
            set_state_dict(
                model,
                optimizer,
                model_state_dict=states["model"],
                optim_state_dict=states["optimizer"],
                # parameters without saved AdamW state keep none; a missing model key has
                # already failed dcp.load (its default planner is strict)
                options=StateDictOptions(strict=False),
            )


def _keep_saved_optimizer_state(optim_state: dict[str, Any], folder: Path) -> None:
    """Drop the state of parameters the saved optimizer had none for (a phase that never
    reached them, e.g. the heads in SSL): `get_state_dict` made state for every parameter,
    and a loaded step count of 1 where the run had none would change its bias correction."""
    saved = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    prefixes = {key.rsplit(".", 1)[0] for key in saved if key.startswith("optimizer.state.")}
    state = optim_state["state"]
    for name in [n for n in state if f"optimizer.state.{n}" not in prefixes]:
        del state[name]


def _states(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """{"model": ..., "optimizer": ...} by parameter name (DTensors under FSDP)."""
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    with _zero_lr(optimizer):  # a fresh optimizer is initialised by a step at lr 0
        model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


@contextlib.contextmanager
def _zero_lr(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """torch's state_dict helpers initialise an optimizer without state by one step with zero
    gradients and each group's "lr" at 0; GroupedAdamW reads its lr tensor instead, so that is
    held at 0 too (weight decay x lr 0 leaves the weights bit for bit)."""
    lr = getattr(optimizer, "lr", None)
    if not isinstance(lr, torch.Tensor):
        yield
        return
    saved = lr.clone()
    lr.zero_()
    try:
        yield
    finally:
        lr.copy_(saved)


def _shared_name() -> str:
    """A new folder name, the main rank's, known to every rank."""
    names = [f"last-{os.urandom(6).hex()}.dcp"]
    dist.broadcast_object_list(names, src=0)
    return names[0]


def _fsync_folder(folder: Path) -> None:
    """Data and names of a folder's files on disk before the rename that publishes them."""
    for path in [*folder.iterdir(), folder] if folder.is_dir() else [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_shards(run: Path, keep: str | None) -> None:
    """Remove shard folders that DIR/last.pt does not name (older saves, killed saves)."""
    for path in [*run.glob("last-*.dcp"), *run.glob(".last-*.dcp.tmp")]:
        if path.name != keep and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def consolidate(run: str | os.PathLike, out: str | os.PathLike) -> Path:
    """One file from a sharded run folder, in one process: DIR/last.pt with the model and
    optimizer state filled in (mixfast/checkpoint.py's layout), so `load_checkpoint`,
    `export_encoder` and `--pretrained-path` read it as any last.pt."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run, out = Path(run), Path(out)
    state = ckpt.load_checkpoint(run / LAST)
    name = state.pop("shards", None)
    if name is None:
        raise ckpt.CheckpointError(f"{run / LAST} is not sharded: use it as it is")
    tmp = out.with_name(f".{out.name}.shards.tmp")
    try:
        dcp_to_torch_save(run / name, tmp)
        full = torch.load(tmp, weights_only=True)
    finally:
        tmp.unlink(missing_ok=True)
    ckpt.save_checkpoint({**state, **full}, out)
    return out


__all__ = ["consolidate", "load_sharded", "remove_stale_shards", "save_sharded"]
