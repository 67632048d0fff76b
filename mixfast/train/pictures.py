"""Pictures of a run: MAE reconstruction grids and the curves of the metrics rows.

`Pictures` draws, at the end of every `recon_every`-th SSL or mix epoch and once at the end of
the run (when the plan has an SSL or mix epoch), a grid of the first `PICTURE_IMAGES` images of
the validation set (else of the SSL data, else of the labeled data) under fixed masks
(`random_masking` with `PICTURE_SEED` / `PICTURE_OFFSET`: the same patches every time, so
successive pictures compare). Rows, top to bottom:

    originals | masked inputs (masked patches grey) | reconstructions (MAE's visualisation:
    visible patches from the original, masked ones from the prediction)

shown in [0, 1] pixels: the dataset's mean / std undone (data without them: the originals'
range), and with `norm_pix_loss` the prediction un-normalised per patch with the original
patch's mean and variance, as MAE's visualisation does. Each image is scaled up by a whole
factor to at least `MIN_CELL` pixels and the cells are `PAD` pixels apart (`grid_size`). It
runs under torch.no_grad in eval mode (train mode restored), only where the RunLog writes (the
main rank; under FSDP every rank runs the forward, whose all-gathers are collective, and the
main rank draws), and touches no RNG, so a run's numbers are the same with or without pictures.

`curves_png` draws DIR/curves.png from the metrics rows (RunLog redraws it every epoch).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from mixfast.ops import random_masking
from mixfast.ops.reference import patchify_images
from mixfast.schedule import EpochSpec
from mixfast.train.config import TrainConfig
from mixfast.train.plan import RunPlan
from mixfast.train.streams import normalize_uint8, split_batch

PICTURE_IMAGES = 8  # columns of a reconstruction grid
PICTURE_SEED = 20_260_101  # fixed masks: independent of the run's seed and position
PICTURE_OFFSET = 0
ROWS = ("original", "masked", "reconstruction")
MIN_CELL = 64  # pixels: small images are scaled up by a whole factor to at least this
PAD = 2  # white pixels around and between the cells
MASKED_GREY = 0.5
NORM_PIX_EPS = 1.0e-6  # as in MAEDecoder.forward_loss


# --------------------------------------------------------------------------------------------
# images


def picture_images(data: Any, count: int = PICTURE_IMAGES) -> tuple[torch.Tensor, Any, Any]:
    """(the first `count` images of `data` as the model sees them (normalised float [B, C,
    H, W]), the source's mean, its std (None when it has none)). A DataLoader's shuffling
    draws from torch's generator: it is restored, so the run's random numbers stay its own."""
    if isinstance(data, DataLoader):
        parts, have = [], 0
        with torch.random.fork_rng(devices=[]):
            for batch in data:
                parts.append(split_batch(batch)[0])
                have += len(parts[-1])
                if have >= count:
                    break
        images, source = torch.cat(parts)[:count], data.dataset
    else:
        rows = [data[i] for i in range(min(count, len(data)))]
        images, source = split_batch(default_collate(rows))[0], data
    mean, std = getattr(source, "mean", None), getattr(source, "std", None)
    return normalize_uint8(images, source).float(), mean, std


def unpatchify(patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, int]):
    """[B, N, C*p*p] (patchify_images' order) -> [B, C, gh*p, gw*p]."""
    gh, gw = grid
    x = patches.reshape(patches.shape[0], gh, gw, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(patches.shape[0], channels, gh * patch, gw * patch)


def pixel_prediction(
    pred: torch.Tensor, images: torch.Tensor, patch: int, norm_pix: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target patches [B, N, C*p*p] of `images`, the prediction in the same pixel units):
    with norm_pix the prediction is per-patch normalised, so it is mapped back with the
    original patch's mean and (unbiased) variance: pred * sqrt(var + eps) + mean."""
    target = patchify_images(images, patch).float()
    pred = pred.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
    return target, pred


@torch.no_grad()
def reconstruction_rows(
    model: torch.nn.Module,
    images: torch.Tensor,
    mask_ratio: float,
    *,
    seed: int = PICTURE_SEED,
    offset: int = PICTURE_OFFSET,
    autocast: Callable[[], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(originals, pixel mask [B, 1, H, W] (1 = masked), reconstructions) in the model's input
    units, from `model.forward_mae` in eval mode (its mode restored)."""
    was_training = model.training
    model.eval()
    try:
        masking = random_masking(
            images.shape[0],
            model.num_patches,
            mask_ratio,
            seed=seed,
            offset=offset,
            device=images.device,
        )
        with autocast() if autocast is not None else contextlib.nullcontext():
            _, pred, mask = model.forward_mae(images, mask_ratio, masking=masking)
    finally:
        model.train(was_training)
    p, channels, grid = model.patch_size, images.shape[1], tuple(model.grid_size)
    norm_pix = bool(getattr(model, "norm_pix_loss", False))
    target, pred = pixel_prediction(pred, images, p, norm_pix)
    mask = mask.float().unsqueeze(-1)  # [B, N, 1]
    pasted = unpatchify(torch.where(mask > 0, pred, target), p, channels, grid)
    pixels = mask.reshape(-1, 1, *grid).repeat_interleave(p, 2).repeat_interleave(p, 3)
    return images.float(), pixels, pasted


def to_display(
    images: torch.Tensor, mean: Any, std: Any, span: tuple[float, float] | None = None
) -> torch.Tensor:
    """Model-input images -> [0, 1] pixels: x * std + mean per channel; without a mean / std
    the (low, high) `span` maps to [0, 1] (default: the images' own)."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        x = x * torch.tensor(std, dtype=torch.float32).view(shape)
        x = x + torch.tensor(mean, dtype=torch.float32).view(shape)
    else:
        low, high = span or (float(x.min()), float(x.max()))
        x = (x - low) / max(high - low, 1e-12)
    return torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)


def cell_scale(height: int, width: int) -> int:
    return max(1, math.ceil(MIN_CELL / max(height, width)))


def grid_size(rows: int, cols: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels of a grid of `rows` x `cols` images of height x width."""
    scale = cell_scale(height, width)
    return rows * height * scale + (rows + 1) * PAD, cols * width * scale + (cols + 1) * PAD


def grid_array(rows: Sequence[torch.Tensor]) -> np.ndarray:
    """Rows of [0, 1] images [B, C, H, W] -> one uint8 picture: [H', W'] for 1 channel (other
    channel counts than 3 shown as their mean), [H', W', 3] for 3, white between cells."""
    batch, channels, height, width = rows[0].shape
    scale = cell_scale(height, width)
    out_channels = 3 if channels == 3 else 1
    full = grid_size(len(rows), batch, height, width)
    grid = np.full((*full, out_channels), 255, dtype=np.uint8)
    cell_h, cell_w = height * scale, width * scale
    for r, images in enumerate(rows):
        x = images if channels in (1, 3) else images.mean(dim=1, keepdim=True)
        x = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
        for c in range(batch):
            top, left = PAD + r * (cell_h + PAD), PAD + c * (cell_w + PAD)
            grid[top : top + cell_h, left : left + cell_w] = x[c]
    return grid[..., 0] if out_channels == 1 else grid


def reconstruction_grid(
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor], mean: Any = None, std: Any = None
) -> np.ndarray:
    """The uint8 grid of ROWS from `reconstruction_rows`' (originals, pixel mask,
    reconstructions) in model-input units; `mean` / `std` undo the dataset's normalisation."""
    originals, pixels, pasted = rows
    span = (float(originals.min()), float(originals.max()))
    shown = to_display(originals, mean, std, span)
    masked = torch.where(pixels.cpu() > 0, torch.full_like(shown, MASKED_GREY), shown)
    return grid_array([shown, masked, to_display(pasted, mean, std, span)])


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 [H, W] or [H, W, 3] array as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Pictures:
    """The reconstruction grids of a run (see the module docstring) on the plan of `log` (a
    RunLog), which writes them: `recon-epochNNN.png` (NNN: the epoch in the plan, from 1) and
    `recon-last.png`. `data`: candidate sources, the first that is not None is drawn."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, log: Any, data: Sequence):
        self.model, self.log = model, log
        self.plan: RunPlan = log.plan
        plan = self.plan
        self.every, self.mask_ratio = config.recon_every, config.mask_ratio
        self.data = next((d for d in data if d is not None), None)
        drawable = hasattr(model, "forward_mae") and hasattr(model, "grid_size")
        pretrains = any(phase != "sl" for phase in plan.epoch_phases)
        # under FSDP the forward is collective: every rank computes, the main rank draws
        self.draws = log.folder is not None
        self.collective = config.fsdp
        self.enabled = (self.draws or config.fsdp) and self.every > 0 and drawable and pretrains
        self.enabled = self.enabled and self.data is not None
        self._images: tuple[torch.Tensor, Any, Any] | None = None

    def names(self, spec: EpochSpec) -> list[str]:
        """The files the end of epoch `spec` draws."""
        if not self.enabled:
            return []
        names = []
        if spec.phase != "sl" and (spec.index + 1) % self.every == 0:
            names.append(f"recon-epoch{spec.index + 1:03d}.png")
        if spec.index == len(self.plan.epoch_phases) - 1:
            names.append("recon-last.png")
        return names

    def after_epoch(self, spec: EpochSpec, global_step: int) -> None:
        """Draw the pictures of epoch `spec`'s end. A picture that cannot be drawn (data or a
        model it cannot read) turns them off with a warning: it never stops the training (nor,
        under DDP, leaves the other ranks waiting for this one; under FSDP every rank first
        agrees that its images are ready, so one rank's failure turns them off everywhere
        before the collective forward)."""
        names = self.names(spec)
        if not names:
            return
        failure = self._load_images()
        if not self._everyone_ready(failure is None):
            self._turn_off(failure or "another rank could not read its picture images")
            return
        try:
            images, mean, std = self._images
            amp = self.plan.amp
            autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else None
            rows = reconstruction_rows(self.model, images, self.mask_ratio, autocast=autocast)
            if not self.draws:
                return
            grid = reconstruction_grid(rows, mean, std)
        except Exception as exc:  # noqa: BLE001 - pictures are a view of the run, not the run
            self._turn_off(f"{type(exc).__name__}: {exc}")
            return
        self.log.add_picture(names, grid, global_step)

    def _load_images(self) -> str | None:
        """The picture images on the device, once. -> why they cannot be read (None: ready)."""
        if self._images is not None:
            return None
        try:
            images, mean, std = picture_images(self.data)
            self._images = images.to(self.plan.device), mean, std
        except Exception as exc:  # noqa: BLE001 - pictures are a view of the run, not the run
            return f"{type(exc).__name__}: {exc}"
        return None

    def _everyone_ready(self, ready: bool) -> bool:
        """Under FSDP in a process group: whether every rank is ready (one all-reduce)."""
        import torch.distributed as dist

        if not (self.collective and dist.is_available() and dist.is_initialized()):
            return ready
        flag = torch.tensor([int(ready)], device=self.plan.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _turn_off(self, why: str) -> None:
        warnings.warn(f"mixfast: no reconstruction pictures from here on: {why}", stacklevel=3)
        self.enabled = False


# --------------------------------------------------------------------------------------------
# curves

PHASE_COLORS = {"ssl": "tab:blue", "mix": "tab:purple", "sl": "tab:orange"}


def curves_png(rows: Sequence[dict[str, Any]], stage_of: Callable[[str], str]) -> bytes:
    """DIR/curves.png of the metrics rows, against the epoch: loss per objective, validation
    top-1 per task, a(t), the learning rate (the optimizer stage change marked), images/s and
    seconds per epoch; dotted lines mark the phase changes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig = Figure(figsize=(13, 7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    epochs = [r["epoch"] for r in rows]

    def series(ax, key, label, color=None, scale=1.0, pick=None):
        points = [(r["epoch"], (pick or (lambda r: r[key]))(r)) for r in rows]
        points = [(x, scale * y) for x, y in points if y is not None]
        if points:
            ax.plot(*zip(*points), "o-", ms=3, label=label, color=color)
        return bool(points)

    ax = axes[0]
    series(ax, "loss_ssl", "ssl (MAE)", PHASE_COLORS["ssl"])
    series(ax, "loss_sl", "sl (cross-entropy)", PHASE_COLORS["sl"])
    ax.set_title("training loss per objective")
    ax = axes[1]
    tasks = max((len(r.get("val_top1_tasks") or []) for r in rows), default=0)
    for k in range(tasks):
        pick = lambda r, k=k: (r.get("val_top1_tasks") or [None] * tasks)[k]
        series(ax, None, f"task {k}", scale=100.0, pick=pick)
    ax.set_title("validation top-1 (%)")
    ax = axes[2]
    for r in rows:
        if r.get("alpha"):
            ax.plot([r["epoch"] - 1, r["epoch"]], r["alpha"], "-", color=PHASE_COLORS["mix"])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("a(t): SSL weight of the mix steps")
    ax = axes[3]
    for stage in dict.fromkeys(stage_of(r["phase"]) for r in rows):
        pick = lambda r, s=stage: r["lr"] if stage_of(r["phase"]) == s else None
        series(ax, None, f"{stage} optimizer", pick=pick)
    for before, after in zip(rows, rows[1:]):
        if stage_of(before["phase"]) != stage_of(after["phase"]):
            ax.axvline(before["epoch"] + 0.5, color="tab:red", lw=1.2)
            ax.annotate(f"{stage_of(after['phase'])}", (after["epoch"], 0), color="tab:red",
                        xycoords=("data", "axes fraction"), fontsize=8)  # fmt: skip
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.set_title("learning rate (at the epoch's end)")
    ax = axes[4]
    series(ax, "images_per_s", "images/s", "tab:green")
    ax.set_title("training images/s (sample passes)")
    ax = axes[5]
    series(ax, "train_s", "train", "tab:gray")
    series(ax, "eval_s", "evaluation", "tab:olive")
    ax.set_title("seconds per epoch")
    for ax in axes:
        for before, after in zip(rows, rows[1:]):
            if before["phase"] != after["phase"]:
                ax.axvline(before["epoch"] + 0.5, color="0.6", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(epochs, default=1) - 1.2, max(epochs, default=1) + 0.2)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    spans = _phase_spans(rows)
    fig.suptitle("phases: " + ", ".join(spans) if spans else "no epoch yet", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.25, hspace=0.38)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _phase_spans(rows: Sequence[dict[str, Any]]) -> list[str]:
    """ "ssl 1-4", "mix 5-6", ... from the rows' phases."""
    spans: list[list[Any]] = []
    for r in rows:
        if spans and spans[-1][0] == r["phase"]:
            spans[-1][2] = r["epoch"]
        else:
            spans.append([r["phase"], r["epoch"], r["epoch"]])
    return [f"{p} {a}" if a == b else f"{p} {a}-{b}" for p, a, b in spans]
