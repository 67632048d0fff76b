"""Training data in a seeded, rank-sharded, resumable order, and evaluation batches.

Pass `c` of stream `s` is randperm(len, seed=(seed, s, c)) cut into micro-batches of
`batch_size`; rank r of W takes micro-batches r, r + W, ... So W processes see exactly the
micro-batches that one process with W x accumulation sees. Incomplete trailing batches are
dropped (fixed shapes: compiled steps never recompile). In-memory sources (a TensorDataset, or a
mixfast.data.ImageDataset of uint8 images) skip the DataLoader: batches are gathered by index
on the device and normalised there. A DataLoader given instead is used as it is (its own order;
resuming mid-epoch replays it up to the saved position).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    TensorDataset,
    default_collate,
)

from mixfast.data import ImageDataset, normalize
from mixfast.train.recipe import sample_keys

# In-memory datasets up to this size are copied to the device once.
ON_DEVICE_BYTES = 2 << 30
Batch = tuple[torch.Tensor, torch.Tensor | None]


def split_batch(batch: Any) -> Batch:
    """images, or (images, labels, ...) -> (images, labels or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    raise ValueError(f"a batch must be images or (images, labels, ...), got {type(batch)}")


def normalize_uint8(images: torch.Tensor, source: Any) -> torch.Tensor:
    """uint8 images of a source with `mean` / `std` (FileImages) -> normalised float."""
    mean = getattr(source, "mean", None)
    if images.dtype != torch.uint8 or mean is None:
        return images
    return normalize(images, mean, source.std)


def steps_per_pass(size: int, group: int) -> int:
    """Optimizer steps in one pass over `size` samples, `group` = batch_size x devices x
    accumulation samples a step; the incomplete last group is dropped (fixed shapes)."""
    return size // group


def pass_seed(seed: int, stream: int, cycle: int) -> int:
    return (seed * 1_000_003 + stream * 10_007 + cycle) % (2**63)


class InMemory:
    """Index-gather batches from a TensorDataset or an ImageDataset (uint8, normalised here)."""

    def __init__(self, dataset: TensorDataset | ImageDataset, device: torch.device) -> None:
        if isinstance(dataset, TensorDataset):
            images, labels = dataset.tensors[0], (dataset.tensors + (None,))[1]
            self.mean = self.std = None
        else:
            images, labels = dataset.images, dataset.labels
            self.mean, self.std = dataset.mean, dataset.std
        nbytes = images.numel() * images.element_size()
        where = device if nbytes <= ON_DEVICE_BYTES else torch.device("cpu")
        self.images = images.to(where)
        self.labels = None if labels is None else labels.to(where)

    @staticmethod
    def supports(dataset: Any) -> bool:
        return isinstance(dataset, TensorDataset | ImageDataset)

    def gather(self, index: torch.Tensor) -> Batch:
        """Raw rows (uint8 for an ImageDataset) of `index`."""
        index = index.to(self.images.device)
        labels = None if self.labels is None else self.labels[index]
        return self.images[index], labels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 rows of an ImageDataset -> normalised float; anything else unchanged."""
        return normalize_uint8(images, self)


class Stream:
    """One training data source read in a seeded, resumable, rank-sharded order.

    State: `cycle` (passes started) and `pos` (micro-batches done in the current pass);
    with the seed they fix the data order exactly (`state_dict` / `load_state_dict`).
    """

    def __init__(
        self,
        source: Dataset | DataLoader,
        key: int,
        *,
        batch_size: int,
        world: int,
        rank: int,
        accum: int,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        name: str = "data",
    ) -> None:
        self.source, self.key, self.name = source, key, name
        self.batch, self.world, self.rank, self.accum = batch_size, world, rank, accum
        self.seed, self.device, self.num_workers = seed, device, num_workers
        self.cycle, self.pos = 0, 0
        self._iter: Iterator[Batch] | None = None
        self._blocks: torch.Tensor | None = None  # the pass's [micro, batch] sample indices
        self.last_index: torch.Tensor | None = None  # sample indices of the last micro-batch
        self.memory: InMemory | None = None
        if isinstance(source, DataLoader):
            self.micro = len(source) // accum * accum
            if self.micro == 0:
                raise ValueError(f"{name}: the DataLoader has fewer than accum_steps batches")
            if world > 1 and not isinstance(source.sampler, DistributedSampler):
                warnings.warn(
                    f"{name}: a DataLoader without a DistributedSampler gives every rank the "
                    "same batches; pass the Dataset instead (the trainer shards it)",
                    stacklevel=3,
                )
            return
        size, group = len(source), batch_size * world * accum
        if size < group:
            raise ValueError(
                f"{name} has {size} samples, fewer than batch_size x devices x accum_steps = "
                f"{batch_size} x {world} x {accum}; lower batch_size"
            )
        self.micro = steps_per_pass(size, group) * accum  # micro-batches per pass, this rank
        if InMemory.supports(source):
            self.memory = InMemory(source, device)

    @property
    def steps(self) -> int:
        """Optimizer steps per pass."""
        return self.micro // self.accum

    def state_dict(self) -> dict[str, int]:
        return {"cycle": self.cycle, "pos": self.pos, "size": len(self.source)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position; refuse a source of another size (other data: the saved
        order would index other samples). States without a size (older runs) load."""
        size = state.get("size")
        if size is not None and size != len(self.source):
            raise ValueError(
                f"resume: {self.name} holds {len(self.source)} samples, the run was made with "
                f"{size}; resume with the run's data settings or start a new run"
            )
        self.cycle, self.pos, self._iter = int(state["cycle"]), int(state["pos"]), None

    def new_pass(self) -> None:
        self.cycle, self.pos, self._iter = self.cycle + 1, 0, None

    def next(self) -> Batch:
        """The next micro-batch (raw: uint8 for an ImageDataset) on the device."""
        if self.pos >= self.micro:  # the shorter stream of a mix epoch cycles
            self.new_pass()
        if self._iter is None:
            self._iter = self._open()
        batch = next(self._iter)
        self.last_index = None if self._blocks is None else self._blocks[self.pos]
        if self.last_index is None:  # a DataLoader given: its rows, counted through the pass
            rows = len(batch[0])
            self.last_index = torch.arange(self.pos * rows, (self.pos + 1) * rows)
        self.pos += 1
        return batch

    def sample_keys(self) -> list[int]:
        """The draw key of each sample of the last micro-batch, from (seed, stream, pass,
        sample index): the same whichever workers or storage served it (recipe.py)."""
        return sample_keys(pass_seed(self.seed, self.key, self.cycle), self.last_index)

    @property
    def mean(self) -> tuple[float, ...] | None:
        """The per-channel mean of the images (None when the source does not say)."""
        return getattr(self.memory or self.source, "mean", None)

    def blocks(self) -> torch.Tensor:
        """[micro, batch] sample indices of this rank for the current pass."""
        gen = torch.Generator().manual_seed(pass_seed(self.seed, self.key, self.cycle))
        perm = torch.randperm(len(self.source), generator=gen)
        blocks = perm[: self.micro * self.world * self.batch].view(-1, self.batch)
        return blocks[self.rank :: self.world]

    def _open(self) -> Iterator[Batch]:
        self._blocks = None
        if isinstance(self.source, DataLoader):
            sampler = getattr(self.source, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.cycle)
            batches = islice(self.source, self.pos, self.micro)
            return (self._to_device(*split_batch(b)) for b in batches)
        self._blocks = self.blocks()
        blocks = self._blocks[self.pos :]
        if self.memory is not None:  # one copy of the pass's indices, then device gathers
            blocks = blocks.to(self.memory.images.device, non_blocking=True)
            return (self._to_device(*self.memory.gather(index)) for index in blocks)
        gen = torch.Generator().manual_seed(pass_seed(self.seed, self.key, self.cycle) + 1)
        loader = DataLoader(
            self.source,
            batch_sampler=blocks.tolist(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=gen,  # worker seeds from here, never from the global RNG
        )
        return (self._to_device(*split_batch(b)) for b in loader)

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor | None) -> Batch:
        images = images.to(self.device, non_blocking=True)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True)
        return images, labels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batches of an ImageDataset or of files (FileImages) -> normalised float."""
        return normalize_uint8(images, self.memory or self.source)

    def sample(self, count: int = 2) -> Batch:
        """A few samples, without moving the stream (for the DDP unused-parameter probe)."""
        if isinstance(self.source, DataLoader):
            return self._to_device(*split_batch(next(iter(self.source))))
        index = torch.arange(min(count, len(self.source)))
        if self.memory is not None:
            return self._to_device(*self.memory.gather(index))
        return self._to_device(*split_batch(default_collate([self.source[int(i)] for i in index])))


class EvalBatches:
    """Evaluation batches of one dataset, this rank's share (no padding), normalised."""

    def __init__(
        self, data: Dataset | DataLoader, *, batch_size: int, rank: int, world: int, device
    ) -> None:
        self.data, self.batch, self.device = data, batch_size, device
        self.rank, self.world = rank, world
        self.memory = InMemory(data, device) if InMemory.supports(data) else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.data, DataLoader):
            for batch in self.data:
                images, labels = split_batch(batch)
                yield images.to(self.device), labels.to(self.device)
            return
        index = torch.arange(self.rank, len(self.data), self.world)
        source = self.memory or self.data  # what knows the mean / std
        for part in index.split(self.batch):
            if self.memory is not None:
                images, labels = self.memory.gather(part)  # on the memory's device
            else:
                images, labels = split_batch(default_collate([self.data[int(i)] for i in part]))
                images = images.to(self.device)
            yield normalize_uint8(images, source).to(self.device), labels.to(self.device)


def num_classes(data: Dataset | DataLoader) -> int:
    """1 + the largest label of a labeled source."""
    dataset = getattr(data, "dataset", data)
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        labels = dataset.tensors[1]
    if labels is None:
        labels = torch.as_tensor([int(split_batch(dataset[i])[1]) for i in range(len(dataset))])
    return int(torch.as_tensor(labels).max()) + 1


def evaluate(
    model: torch.nn.Module, evals: list[EvalBatches], dist, autocast: Callable
) -> list[float | None]:
    """Top-1 in [0, 1] of `model.forward_sl` on each evaluation set (task k uses head k),
    summed over ranks; the model is put back in train mode. Under FSDP (`dist.sharded`) in
    no_grad rather than inference mode: the all-gathered parameters are reused by training."""
    model.eval()
    results = []
    try:
        with torch.inference_mode(not dist.sharded), torch.no_grad():
            for task, batches in enumerate(evals):
                counts = torch.zeros(2, dtype=torch.float64, device=batches.device)
                for images, labels in _in_lockstep(batches, dist):
                    with autocast():
                        logits = model.forward_sl(images, task=task)
                    if labels is not None:
                        counts[0] += (logits.argmax(-1) == labels).sum()
                        counts[1] += labels.numel()
                correct, total = dist.all_sum(counts).tolist()
                results.append(correct / total if total else None)
    finally:
        model.train()
    return results


def _in_lockstep(batches: EvalBatches, dist) -> Iterator[tuple[torch.Tensor, Any]]:
    """The batches; under FSDP every forward all-gathers, so a rank with fewer batches than
    another repeats its last one (labels None: not counted) until they are even."""
    last, count = None, 0
    for images, labels in batches:
        last, count = images, count + 1
        yield images, labels
    if not dist.sharded:
        return
    most = int(dist.all_max(torch.tensor(count, device=batches.device)))
    for _ in range(most - count):
        yield last, None


def check_labels(streams: list[Stream], task_classes: list[int] | None) -> None:
    """Labels of in-memory sources inside their head's classes, before any step (one read of
    each label tensor at setup; streamed sources are not read ahead)."""
    for k, stream in enumerate(streams):
        labels = None if stream.memory is None else stream.memory.labels
        if task_classes is None or labels is None or labels.numel() == 0:
            continue
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= task_classes[k]:
            raise ValueError(
                f"{stream.name}: labels must be in [0, {task_classes[k]}) (the classes of head "
                f"{k}), got [{low}, {high}]"
            )
