"""The fine-tune recipe of timm on the SL images of a step: RandAugment (`aa`) and random
erasing (`reprob`) per sample, Mixup / CutMix (`mixup`, `cutmix`) per micro-batch, with
SoftTargetCrossEntropy on the soft targets (mixfast.model.packed.cross_entropy).

Where: in the batch pipeline (PhaseBatches.next), for in-memory and streamed sources alike,
on the SL images only; the SSL images of a mix step stay clean (so with the recipe on a mix step
embeds two image tensors, and the FLOP count says so). The order per SL sample is

    uint8 image --RandAugment (host, PIL)--> --crop+flip (augment) or normalise (device)-->
    --RandomErasing (device)--> --Mixup/CutMix of the micro-batch--> (images, soft targets)

timm's own order puts the crop first; RandAugment runs here on the stored image instead, the
crop (`augment`, off by default) after it. Every draw is keyed, never taken from a running
generator: RandAugment and erasing of a sample by (seed, stream, pass, sample index), Mixup of a
micro-batch by (seed, global micro-batch index, task). So a run does not depend on num_workers,
on in-memory vs streamed storage, or on where it was stopped and resumed. timm draws from the
global `random`, numpy and torch generators; each keyed draw here seeds them and puts their
state back afterwards, so the rest of the run's draws are untouched.

Mixup needs an even batch: the rule here mixes the first B - B % 2 rows and leaves the last row
of an odd micro-batch unmixed, with its own (label-smoothed) one-hot target.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mixfast.checks import SettingError

AA_SPEC = re.compile(r"^rand(-(m\d+|n\d+|p[\d.]+|mstd[\d.]+|mmax\d+|inc[01]|t\w+))*$")
# timm's PosterizeIncreasing keeps 0 bits at magnitude 10, which Pillow >= 10 refuses; a
# magnitude clipped just below 10 keeps 1 bit there and changes no other op measurably.
AA_MAGNITUDE_MAX = 9.99
TRANSLATE_SHARE = 0.45  # timm's translate_const: 45 % of the image side
ERASE_SALT = 0x5EED  # erasing's draws of a sample differ from its RandAugment draws
KEY_MOD = 2**63


def check_aa(spec: str | None) -> None:
    """`spec` is None or a RandAugment spec of timm's (rand-m9-mstd0.5-inc1)."""
    if spec is None:
        return
    if not isinstance(spec, str) or not AA_SPEC.match(spec):
        raise SettingError(
            f"{{aa}} must be a RandAugment spec such as 'rand-m9-mstd0.5-inc1' (rand, then "
            f"-mN -nN -pP -mstdS -mmaxN -inc0/1 -tNAME sections), got {spec!r}"
        )


def sample_keys(pass_key: int, index: torch.Tensor) -> list[int]:
    """One int per sample: the key of its draws, from its stream's pass key and its index."""
    return [(pass_key * 1_000_000_007 + int(i)) % KEY_MOD for i in index.tolist()]


@contextlib.contextmanager
def own_draws(device: torch.device | None = None) -> Iterator[None]:
    """Seed `random`, numpy and torch inside, and put their states back after."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def seed_all(key: int, torch_too: bool = False) -> None:
    random.seed(key)
    np.random.seed([key & 0xFFFFFFFF, key >> 32])
    if torch_too:
        torch.manual_seed(key)


class Recipe:
    """timm's per-sample and per-batch SL augmentations of a run (each off at its default).

    `task_classes`: classes per head (Mixup's targets); `seed`: the run's seed; the others as
    TrainConfig's fields of the same names.
    """

    def __init__(
        self,
        *,
        aa: str | None = None,
        reprob: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        label_smoothing: float = 0.0,
        task_classes: Sequence[int] = (),
        seed: int = 0,
    ) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        check_aa(aa)
        self.aa, self.seed, self.label_smoothing = aa, seed, label_smoothing
        self._aa: dict[tuple, Callable] = {}  # RandAugment per (image side, fill colour)
        self.erasing = None
        if reprob > 0:
            self.erasing = RandomErasing(reprob, mode="pixel", max_count=1, device="cpu")
        self.mixups = []
        if mixup > 0 or cutmix > 0:
            self.mixups = [
                Mixup(
                    mixup_alpha=mixup,
                    cutmix_alpha=cutmix,
                    label_smoothing=label_smoothing,
                    num_classes=classes,
                )
                for classes in task_classes
            ]

    @property
    def active(self) -> bool:
        """The SL images differ from the SSL images of the same samples."""
        return bool(self.aa or self.erasing or self.mixups)

    def sl_images(
        self,
        raw: torch.Tensor,
        keys: list[int],
        prepare: Callable[[torch.Tensor], torch.Tensor],
        mean: Sequence[float] | None,
    ) -> torch.Tensor:
        """Model input [B, C, H, W] of SL rows `raw` (uint8 when aa is on), each sample's
        draws keyed by `keys`; `prepare` crops or normalises; `mean` fills RandAugment's
        uncovered pixels (None: grey)."""
        x = self.rand_augment(raw, keys, mean) if self.aa else raw
        out = prepare(x)
        if out.data_ptr() == raw.data_ptr():  # never write into the source or the SSL view
            out = out.clone()
        if self.erasing is not None:
            self.erase(out, keys)
        return out

    def rand_augment(
        self, images: torch.Tensor, keys: list[int], mean: Sequence[float] | None
    ) -> torch.Tensor:
        """timm's RandAugment of each uint8 image [B, C, H, W] (on the host, through PIL)."""
        from PIL import Image

        if images.dtype != torch.uint8 or images.shape[1] not in (1, 3):
            raise ValueError(
                "aa (RandAugment) needs uint8 images with 1 or 3 channels (an ImageDataset or "
                f"image files), got {images.dtype} {list(images.shape)}"
            )
        transform = self._transform(images.shape[-1], images.shape[1], mean)
        host = images.cpu()
        out = torch.empty_like(host)
        with own_draws():
            for i, key in enumerate(keys):
                seed_all(key)
                pixels = host[i, 0] if host.shape[1] == 1 else host[i].permute(1, 2, 0)
                result = np.asarray(transform(Image.fromarray(pixels.numpy())))
                result = torch.from_numpy(result.copy())
                out[i] = result if result.dim() == 2 else result.permute(2, 0, 1)
        return out.to(images.device)

    def _transform(self, side: int, channels: int, mean: Sequence[float] | None) -> Callable:
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(min(255, round(255 * m)) for m in (mean or (0.5,) * channels))
        cache = (side, fill)
        if cache not in self._aa:
            hparams = {
                "translate_const": int(side * TRANSLATE_SHARE),
                "img_mean": fill[0] if channels == 1 else fill,
                "magnitude_max": _magnitude_max(self.aa),
            }
            self._aa[cache] = rand_augment_transform(self.aa, hparams)
        return self._aa[cache]

    def erase(self, images: torch.Tensor, keys: list[int]) -> None:
        """timm's RandomErasing (per-pixel normal noise) of each normalised image, in place."""
        self.erasing.device = images.device
        with own_draws(images.device):
            for i, key in enumerate(keys):
                seed_all(key ^ ERASE_SALT, torch_too=True)
                self.erasing(images[i])

    def mix(
        self, images: torch.Tensor, labels: torch.Tensor, task: int, key: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup / CutMix of one micro-batch of task `task` in place: (images, soft targets
        [B, classes] summing to 1). The even part B - B % 2 is mixed (timm's Mixup needs pairs);
        the last row of an odd batch keeps its image and its own one-hot target. Unchanged
        (integer labels) when neither is on."""
        from timm.data.mixup import mixup_target

        if not self.mixups:
            return images, labels
        mixup = self.mixups[task]
        targets = mixup_target(labels, mixup.num_classes, 1.0, self.label_smoothing)
        even = len(images) - len(images) % 2
        if even:
            with own_draws():
                seed_all((key * 1_000_003 + task) % KEY_MOD)
                _, targets[:even] = mixup(images[:even], labels[:even])
        return images, targets

    def mix_key(self, offset: int) -> int:
        """The key of the Mixup draw of global micro-batch `offset`."""
        return (self.seed * 1_000_000_007 + offset) % KEY_MOD


def _magnitude_max(spec: str) -> float:
    given = [int(part[4:]) for part in spec.split("-") if re.fullmatch(r"mmax\d+", part)]
    return min([AA_MAGNITUDE_MAX, *given])


def recipe_of(config, task_classes: Sequence[int]) -> Recipe:
    """The Recipe of a TrainConfig."""
    return Recipe(
        aa=config.aa,
        reprob=config.reprob,
        mixup=config.mixup,
        cutmix=config.cutmix,
        label_smoothing=config.label_smoothing,
        task_classes=task_classes,
        seed=config.seed,
    )


__all__ = ["Recipe", "check_aa", "recipe_of", "sample_keys"]
