"""The loss and the batch of each phase: SSL steps call `forward_ssl`, SL steps `forward_sl` +
cross-entropy, mix steps `forward_mixed` with a(t) as a 0-dim device tensor.

A batch is {"ssl": images} and/or {"sl": [(images, labels)] per task}, augmented on the device.
The model meets the trainer through the `mixfast.model.MixModel` protocol. The MAE masks of a
micro-batch are always made here, outside any compiled region (`random_masking` keyed by the
seed and the micro-batch's index in the global order), and passed as `masking=`, so a new step
never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from mixfast.model import MixModel
from mixfast.model.packed import cross_entropy
from mixfast.ops import MaskingResult, random_masking
from mixfast.ops.cast_once import cast_once
from mixfast.train.config import TrainConfig
from mixfast.train.recipe import Recipe
from mixfast.train.streams import Stream

LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class Objectives(nn.Module):
    """Routes forward(kind, ...) to model.forward_<kind>, so DDP sees one forward.
    `class_forwards`: call the class's methods, ignoring any replaced on the instance.
    `cast_dtype`: under autocast, the forward runs on the model's Linear weights and biases
    cast to it by one kernel (ops.cast_once) instead of one cast per Linear; same values."""

    def __init__(
        self, model: nn.Module, class_forwards: bool = False, cast_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.model, self.class_forwards, self.cast_dtype = model, class_forwards, cast_dtype
        self._linear: tuple[list[str], list[torch.Tensor]] | None = None

    def forward(self, kind: str, *args, _cast: bool = True, **kwargs):
        if _cast and self._casting():
            names, params = self._linear_params()
            casts = dict(zip(names, cast_once(params, self.cast_dtype), strict=True))
            return functional_call(self, casts, (kind, *args), {**kwargs, "_cast": False})
        name = f"forward_{kind}"
        if self.class_forwards:
            return getattr(type(self.model), name)(self.model, *args, **kwargs)
        return getattr(self.model, name)(*args, **kwargs)

    def _casting(self) -> bool:
        if self.cast_dtype is None:
            return False
        device = next(self.model.parameters()).device.type
        return (
            torch.is_autocast_enabled(device)
            and torch.get_autocast_dtype(device) == self.cast_dtype  # else autocast recasts
            and bool(self._linear_params()[1])
        )

    def _linear_params(self) -> tuple[list[str], list[torch.Tensor]]:
        """(names in this module, tensors) of every nn.Linear's weight and bias, found once."""
        if self._linear is None:
            pairs = [
                (f"model.{module_name}.{name}", p)
                for module_name, module in self.model.named_modules()
                if isinstance(module, nn.Linear)
                for name, p in module.named_parameters(recurse=False)
            ]
            self._linear = ([n for n, _ in pairs], [p for _, p in pairs])
        return self._linear


def weight_cast(amp: bool, distributed: bool) -> torch.dtype | None:
    """Objectives' cast_dtype: bf16 under AMP, except under DDP, whose bucketed all-reduce
    overlaps the backward only while gradients arrive layer by layer (cast_once hands all
    of them over at the end)."""
    return torch.bfloat16 if amp and not distributed else None


def make_loss(phase: str, cfg: TrainConfig, tasks: int) -> LossFn:
    """The loss of one micro-batch: fn(net, batch, alpha, masking) -> (loss, parts), on a
    model that implements mixfast.model.MixModel. `masking`: the micro-batch's MAE masks
    (phase_masks), made outside any compiled region so a new step never recompiles; None for
    an SL step."""
    weights = cfg.task_weights or [1.0 / tasks] * tasks

    def masking_kwargs(masking) -> dict[str, Any]:
        return {"mask_ratio": cfg.mask_ratio, "masking": masking}

    def ssl_loss(net, batch, alpha, masking):
        loss = net("ssl", batch["ssl"], **masking_kwargs(masking))
        return loss, {"ssl": loss}

    def sl_loss(net, batch, alpha, masking):
        loss = 0.0
        for k, (images, labels) in enumerate(batch["sl"]):
            logits = net("sl", images, task=k) if tasks > 1 else net("sl", images)
            ce = cross_entropy(logits, labels, cfg.label_smoothing)  # soft targets: Mixup's
            loss = loss + weights[k] * ce
        return loss, {"sl": loss}

    def mix_loss(net, batch, alpha, masking):
        sl = batch["sl"]
        images = sl[0][0] if tasks == 1 else [x for x, _ in sl]
        labels = sl[0][1] if tasks == 1 else [y for _, y in sl]
        return net(
            "mixed",
            batch["ssl"],
            images,
            labels,
            alpha=alpha,
            sl_view=cfg.sl_view,
            task_weights=cfg.task_weights,
            label_smoothing=cfg.label_smoothing,
            **masking_kwargs(masking),
        )

    return {"ssl": ssl_loss, "sl": sl_loss, "mix": mix_loss}[phase]


class PhaseBatches:
    """The batches of each phase from the SSL stream (None: the SL images serve both
    objectives) and one SL stream per task, augmented (or normalised) on the device; the SL
    images through `recipe` (timm's fine-tune augmentations, recipe.py) when it is active."""

    def __init__(
        self,
        ssl_stream: Stream | None,
        sl_streams: Sequence[Stream],
        augment: Callable[[torch.Tensor], torch.Tensor] | None,
        recipe: Recipe | None = None,
    ) -> None:
        self.ssl_stream, self.sl_streams, self.augment = ssl_stream, list(sl_streams), augment
        self.recipe = recipe or Recipe()
        if self.recipe.aa:
            for s in self.sl_streams:  # RandAugment needs uint8 images: refuse before any step
                self.recipe.rand_augment(s.sample(1)[0], [0], s.mean)

    @property
    def streams(self) -> list[Stream]:
        return [s for s in (self.ssl_stream, *self.sl_streams) if s is not None]

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint keys "streams" (each stream's place in the data order) and
        "augment_rng" (the on-device augmentation's generator, None without one). The recipe
        keeps no state: its draws are keyed by sample and micro-batch."""
        generator = self._augment_generator()
        return {
            "streams": {s.name: s.state_dict() for s in self.streams},
            "augment_rng": None if generator is None else generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s in self.streams:
            s.load_state_dict(state["streams"][s.name])
        generator = self._augment_generator()
        if generator is not None and state["augment_rng"] is not None:
            generator.set_state(state["augment_rng"])

    def _augment_generator(self) -> torch.Generator | None:
        generator = getattr(self.augment, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    @property
    def storage(self) -> str:
        """ "in-memory" when every stream gathers batches from memory; "streamed" when one reads
        through a DataLoader (image files decoded in workers, or a DataLoader given)."""
        return "in-memory" if all(s.memory is not None for s in self.streams) else "streamed"

    def of_phase(self, phase: str) -> list[Stream]:
        """The streams a phase reads (each starts a new pass at the phase's epoch start)."""
        if phase == "ssl":
            return [self.ssl_stream or self.sl_streams[0]]
        streams = list(self.sl_streams)
        if phase == "mix" and self.ssl_stream is not None:
            streams.insert(0, self.ssl_stream)
        return streams

    def _prepare(self, stream: Stream, images: torch.Tensor) -> torch.Tensor:
        return self.augment(images) if self.augment else stream.normalize(images)

    def next(self, phase: str, ssl_rows: int | None = None, offset: int = 0) -> dict[str, Any]:
        """The next micro-batch of `phase`, augmented (or normalised) on the device; a mix
        batch's SSL sub-batch is its first `ssl_rows` rows (None: all of them). `offset`: the
        micro-batch's global index (it keys the recipe's Mixup draw)."""

        def sl(stream: Stream, images, labels, task: int):
            if labels is None:
                raise ValueError(f"sl_data task {task} yields no labels")
            prepare = lambda x: self._prepare(stream, x)  # noqa: E731
            images = self.recipe.sl_images(images, stream.sample_keys(), prepare, stream.mean)
            return self.recipe.mix(images, labels, task, self.recipe.mix_key(offset))

        batch = self._assemble(phase, lambda s: s.next(), self._prepare, ssl_rows, sl)
        for k, (_, labels) in enumerate(batch.get("sl", [])):
            if labels is None:
                raise ValueError(f"sl_data task {k} yields no labels")
        return batch

    def sample(self, phase: str, count: int = 2, ssl_rows: int | None = None) -> dict[str, Any]:
        """A batch of `count` samples of `phase` without moving any stream (for the DDP
        unused-parameter probe and the FLOP count), normalised, not augmented; with the recipe
        on, a mix batch's SL images are a tensor of their own, as in training."""

        def prepare(stream: Stream, images: torch.Tensor) -> torch.Tensor:
            return stream.normalize(images)

        def sl(stream: Stream, images, labels, task: int):
            return prepare(stream, images).clone(), labels

        return self._assemble(phase, lambda s: s.sample(count), prepare, ssl_rows, sl)

    def _assemble(self, phase: str, take, prepare, ssl_rows: int | None, sl) -> dict[str, Any]:
        """{"ssl": images} and/or {"sl": [(images, labels)] per task}: `take(stream)` reads a
        batch, `prepare(stream, images)` makes it model input, `sl(stream, images, labels,
        task)` makes SL input with the recipe on. With one source for both objectives and no
        recipe, a mix batch's SL images are its SSL images (embedded once)."""
        batch: dict[str, Any] = {}
        recipe = self.recipe.active
        plain = lambda s, x, y, k: (prepare(s, x), y)  # noqa: E731
        if phase != "ssl" and recipe:
            plain = sl
        if phase != "sl":
            src = self.ssl_stream or self.sl_streams[0]
            images, labels = take(src)
            batch["ssl"] = prepare(src, images)
            if self.ssl_stream is None and phase == "mix":
                shared = (batch["ssl"], labels) if not recipe else plain(src, images, labels, 0)
                batch["sl"] = [shared]
        if phase != "ssl":
            first = 1 if "sl" in batch else 0
            tasks = batch.setdefault("sl", [])
            for k, s in enumerate(self.sl_streams[first:], start=first):
                images, labels = take(s)
                tasks.append(plain(s, images, labels, k))
        if phase == "mix" and ssl_rows is not None:
            batch["ssl"] = batch["ssl"][:ssl_rows]  # the SL sub-batch keeps every row
        return batch


def phase_masks(
    model: MixModel, cfg: TrainConfig, phase: str, batch: dict[str, Any], offset: int
) -> MaskingResult | None:
    """The MAE masks of one micro-batch at global micro-batch index `offset` (None for SL)."""
    if phase == "sl":
        return None
    ssl = batch["ssl"]
    rows = ssl.shape[0]
    if phase == "mix" and cfg.sl_view == "masked":  # SL images with their own masks
        own = {id(x): x.shape[0] for x, _ in batch["sl"] if x is not ssl}
        rows += sum(own.values())
    return random_masking(
        rows, model.num_patches, cfg.mask_ratio, seed=cfg.seed, offset=offset, device=ssl.device
    )
